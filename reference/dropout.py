"""Reference Dropout: the same key's uniforms compared with 1 - rate, times the mask, over 1 - rate."""

import jax
import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Dropout, params, x, taps):
    if not layer.training or layer.rate == 0:
        return x
    if layer.key is None:
        raise ValueError(f"reference: Dropout (rate {layer.rate}) in training mode needs a key")
    keep = jax.random.uniform(layer.key, x.shape, jnp.float32) < jnp.float32(1 - layer.rate)
    return x * keep.astype(x.dtype) / (1 - layer.rate)
