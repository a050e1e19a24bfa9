"""Reference activations: jax.nn (its derivative conventions are the ones to match)."""

import jax
import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Identity, params, x, taps):
    return x


@forward.register
def _(layer: mbp.Sigmoid, params, x, taps):
    return jax.nn.sigmoid(x)


@forward.register
def _(layer: mbp.Tanh, params, x, taps):
    return jnp.tanh(x)


@forward.register
def _(layer: mbp.ReLU, params, x, taps):
    return jax.nn.relu(x)


@forward.register
def _(layer: mbp.LeakyReLU, params, x, taps):
    return jax.nn.leaky_relu(x, layer.negative_slope)


@forward.register
def _(layer: mbp.Softplus, params, x, taps):
    return jax.nn.softplus(x)


@forward.register
def _(layer: mbp.GELU, params, x, taps):
    return jax.nn.gelu(x, approximate=layer.approximate)


@forward.register
def _(layer: mbp.Elementwise, params, x, taps):
    return layer.fn(x)  # the user's forward; jax.grad of it checks the user's derivative
