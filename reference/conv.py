"""Reference Conv2D: lax.conv_general_dilated (NHWC, HWIO), padding strings passed to XLA as they are."""

from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding(padding):
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding), (padding, padding)]
    return [tuple(p) for p in padding]


@forward.register
def _(layer: mbp.Conv2D, params, x, taps):
    y = lax.conv_general_dilated(
        x, params["W"], window_strides=_pair(layer.stride), padding=_padding(layer.padding),
        rhs_dilation=_pair(layer.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + params["b"][None, None, None, :] if layer.use_bias else y
