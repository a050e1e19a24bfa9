"""Reference Flatten: jnp.reshape to (N, -1)."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Flatten, params, x, taps):
    return jnp.reshape(x, (x.shape[0], -1))
