"""Reference Conv1D: lax.conv_general_dilated over one spatial axis (NWC, WIO), padding strings passed to XLA."""

from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


def _padding(layer):
    p = layer.padding
    if p == "CAUSAL":
        return [((layer.kernel_size - 1) * layer.dilation, 0)]
    if isinstance(p, str):
        return p
    if isinstance(p, int):
        return [(p, p)]
    return [tuple(p)]


@forward.register
def _(layer: mbp.Conv1D, params, x, taps):
    y = lax.conv_general_dilated(
        x, params["W"], window_strides=(layer.stride,), padding=_padding(layer), rhs_dilation=(layer.dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"),
    )
    return y + params["b"][None, None, :] if layer.use_bias else y
