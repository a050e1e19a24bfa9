"""Reference LayerNorm and BatchNorm: jnp.mean / jnp.var and a division by the standard deviation; BatchNorm's running statistics."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import apply, forward, forward_eval, forward_train


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


@forward_eval.register
def _(layer: mbp.BatchNorm, params, stats, x):
    mean, var = (jnp.broadcast_to(stats[k], x.shape) for k in ("mean", "var"))
    return _affine(params, (x - mean) / jnp.sqrt(var + layer.epsilon))


@forward_train.register
def _(layer: mbp.BatchNorm, params, stats, x):
    """The batch's own statistics for y; running statistics s <- momentum s + (1 - momentum) s_batch (biased var)."""
    axes, m = tuple(range(x.ndim - 1)), layer.momentum
    batch = {"mean": jnp.mean(x, axis=axes), "var": jnp.var(x, axis=axes)}
    new = {k: m * stats[k] + (1 - m) * batch[k] for k in ("mean", "var")}
    return apply(layer, params, x), new
