"""Reference global pools: jnp.mean over the image; lax.reduce_window max with one window covering it (first-max gradient)."""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.GlobalAvgPool2D, params, x, taps):
    return jnp.mean(x, axis=(1, 2))


@forward.register
def _(layer: mbp.GlobalMaxPool2D, params, x, taps):
    N, H, W, C = x.shape
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, H, W, 1), (1, 1, 1, 1), "VALID").reshape(N, C)
