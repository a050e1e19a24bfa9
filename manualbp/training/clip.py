"""Gradient clipping by global norm, written by hand (the remedy for exploding gradients: Pascanu et al. 2013).

A pair of pure functions in an ``optax.GradientTransformation``, so it
chains with any optax optimizer: ``optax.chain(clip_by_global_norm(1.0),
optax.sgd(0.1))``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from manualbp.layers.arguments import check_number


class ClipByGlobalNormState(NamedTuple):
    """Clipping keeps no state."""


def global_norm(tree) -> jax.Array:
    """||g|| = sqrt(sum over every leaf and entry of g^2): the norm of all gradients as one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Cap the global norm of the updates at c, keeping their direction.

    g <- g if ||g|| < c, else g <- g / ||g|| * c  (c = max_norm; ||g|| = global_norm(g)).

    Args:
      max_norm: c > 0, the largest global norm an update may have.

    Returns:
      An ``optax.GradientTransformation``; updates keep the params' tree structure.

    References:
      Pascanu et al., On the difficulty of training recurrent neural networks, 2013.
    """
    check_number("clip_by_global_norm", "max_norm", max_norm, low=0, low_open=True)

    def init_fn(params):
        del params
        return ClipByGlobalNormState()

    def update_fn(updates, state, params=None):
        del params
        norm = global_norm(updates)
        keep = norm < max_norm
        # divide then multiply (not g * (c / ||g||)): the same rounding as optax's clip
        updates = jax.tree_util.tree_map(lambda g: jnp.where(keep, g, g / norm.astype(g.dtype) * max_norm), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)
