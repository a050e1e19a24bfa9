"""Reference Residual: x + the block's reference forward (its layers tapped under "block")."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import apply, forward


@forward.register
def _(layer: mbp.Residual, params, x, taps):
    return jnp.add(x, apply(layer.block, params, x, taps.child("block")))
