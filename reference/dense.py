"""Reference Dense: jnp.einsum over the last axis."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Dense, params, x, taps):
    y = jnp.einsum("...i,io->...o", x, params["W"])
    return y + jnp.broadcast_to(params["b"], y.shape) if layer.use_bias else y
