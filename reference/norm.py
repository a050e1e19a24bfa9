"""Reference LayerNorm and BatchNorm: jnp.mean / jnp.var and a division by the standard deviation."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


def _standardize(x, axes, eps):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)


def _affine(params, z):
    return jnp.einsum("...c,c->...c", z, params["gamma"]) + jnp.broadcast_to(params["beta"], z.shape)


@forward.register
def _(layer: mbp.LayerNorm, params, x, taps):
    return _affine(params, _standardize(x, -1, layer.epsilon))


@forward.register
def _(layer: mbp.BatchNorm, params, x, taps):
    return _affine(params, _standardize(x, tuple(range(x.ndim - 1)), layer.epsilon))
