"""Reference Conv2D: x zero-padded with jnp.pad, then a VALID lax.conv_general_dilated (NHWC, HWIO).

Padding first (the "SAME" amounts from ``lax.padtype_to_pads``) rather than handing the padding to the
convolution: jax.grad of a strided convolution padded inside can, on degenerate shapes (an output
narrower than the kernel next to a stride equal to it), make XLA CPU's simplifier emit an invalid
transposed convolution that aborts the process; the VALID convolution's transpose always pads.
"""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(layer, x):
    stride, dilation = _pair(layer.stride), _pair(layer.dilation)
    span = [(k - 1) * d + 1 for k, d in zip(_pair(layer.kernel_size), dilation)]
    if isinstance(layer.padding, str):
        return lax.padtype_to_pads(x.shape[1:3], span, stride, layer.padding)
    if isinstance(layer.padding, int):
        return [(layer.padding, layer.padding)] * 2
    return [tuple(p) for p in layer.padding]


@forward.register
def _(layer: mbp.Conv2D, params, x, taps):
    xp = jnp.pad(x, [(0, 0), *_pads(layer, x), (0, 0)])
    y = lax.conv_general_dilated(
        xp, params["W"], window_strides=_pair(layer.stride), padding="VALID",
        rhs_dilation=_pair(layer.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + params["b"][None, None, None, :] if layer.use_bias else y
