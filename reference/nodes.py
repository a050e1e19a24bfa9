"""Reference Add and Multiply: jnp.add, jnp.multiply."""

import jax.numpy as jnp

import manualbp as mbp
from reference.layer import forward


@forward.register
def _(layer: mbp.Add, params, x, taps):
    return jnp.add(*x)


@forward.register
def _(layer: mbp.Multiply, params, x, taps):
    return jnp.multiply(*x)
