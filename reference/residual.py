"""Reference Residual: x + the block's reference forward (its layers tapped under "block"), also in evaluation mode."""

import jax.numpy as jnp

import manualbp.layers as mbp
from manualbp.layers.base import child_stats, with_child_stats

from .dispatch import apply, forward, forward_eval, forward_train


@forward.register
def _(layer: mbp.Residual, params, x, taps):
    return jnp.add(x, apply(layer.block, params, x, taps.child("block")))


@forward_eval.register
def _(layer: mbp.Residual, params, stats, x):
    return jnp.add(x, forward_eval(layer.block, params, child_stats(stats, "block", layer.block), x))


@forward_train.register
def _(layer: mbp.Residual, params, stats, x):
    fx, s = forward_train(layer.block, params, child_stats(stats, "block", layer.block), x)
    return jnp.add(x, fx), with_child_stats({}, "block", layer.block, s)
