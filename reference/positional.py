"""Reference PositionalEmbedding: the first T rows of P gathered with lax.dynamic_slice, broadcast over the batch."""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.PositionalEmbedding, params, x, taps):
    B, T, F = x.shape
    rows = lax.dynamic_slice(params["P"], (0, 0), (T, F))
    return x + jnp.broadcast_to(rows, (B, T, F))
