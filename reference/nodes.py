"""Reference Add and Multiply: jnp.add, jnp.multiply."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Add, params, x, taps):
    return jnp.add(*x)


@forward.register
def _(layer: mbp.Multiply, params, x, taps):
    return jnp.multiply(*x)
