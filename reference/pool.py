"""Reference pools: lax.reduce_window, as flax's max_pool / avg_pool (count_include_pad=True)."""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


def _dims(layer):
    window = (layer.window, layer.window) if isinstance(layer.window, int) else tuple(layer.window)
    stride = window if layer.stride is None else layer.stride
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return (1, *window, 1), (1, *stride, 1)


@forward.register
def _(layer: mbp.MaxPool2D, params, x, taps):
    window, strides = _dims(layer)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, layer.padding)


@forward.register
def _(layer: mbp.AvgPool2D, params, x, taps):
    window, strides = _dims(layer)
    return lax.reduce_window(x, 0.0, lax.add, window, strides, layer.padding) / (window[1] * window[2])
