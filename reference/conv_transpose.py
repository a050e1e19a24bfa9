"""Reference ConvTranspose2D: lax.conv_transpose (NHWC, HWIO), its padding strings and transpose_kernel passed as they are."""

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
def _(layer: mbp.ConvTranspose2D, params, x, taps):
    y = lax.conv_transpose(
        x, params["W"], _pair(layer.stride), _padding(layer.padding), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        transpose_kernel=layer.transpose_kernel,
    )
    return y + params["b"][None, None, None, :] if layer.use_bias else y
