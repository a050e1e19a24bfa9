"""Dropout with an explicit PRNG key, and the two functions that set every Dropout of a model at once.

How the key reaches the layer. The layer protocol is ``forward(params, x)``;
a key is neither a parameter (optax would update it) nor data (every layer
before the Dropout would have to pass it on). It is a hyperparameter of the
layer, like the rate: ``Dropout(rate, key=k)``, or, for a whole model,
``with_dropout_key(model, k)``, which returns the model with its i-th
Dropout (depth first) bound to ``jax.random.fold_in(k, i)``, rebuilt through
the containers' ``replace_children``. So

- ``compare``, ``check_layer`` and ``gradcheck`` see a deterministic layer:
  the manual and the reference forward draw the SAME mask from the same key,
  and finite differences perturb a fixed function;
- a training step binds a fresh key inside its jitted function,
  ``loss(with_dropout_key(model, jax.random.fold_in(key, step)), ...)``: the
  key may be a tracer there (no recompilation per step), and the twin run
  binds the same key on both paths, so both drop the same units;
- ``without_dropout(model)`` (or ``Dropout(rate, training=False)``) is the
  evaluation model: every Dropout is the identity.

A Dropout in training mode with rate > 0 and no key raises a ValueError: a
silently fixed mask, or no dropout at all, would be a wrong model that
still trains.

A layer bound to a concrete key is hashable (the key's bits are part of its
identity), so it can be a static argument of ``jax.jit``; one bound to a
traced key lives only inside the function that bound it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.arguments import as_key, check_layer_object
from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, children_of

_NO_KEY = (
    "Dropout: training mode (rate {rate}) needs a PRNG key: bind one with mbp.with_dropout_key(model, key) or "
    "Dropout(rate, key=key); for evaluation use mbp.without_dropout(model) or Dropout(rate, training=False)"
)


def _key_token(key):
    """What a key contributes to the layer's hash and equality: its implementation and bits."""
    if key is None:
        return None
    if isinstance(key, jax.core.Tracer):
        raise TypeError(
            "Dropout: a layer bound to a traced key cannot be hashed (e.g. passed as a static argument of "
            "jax.jit); bind the key inside the jitted function instead"
        )
    return str(jax.random.key_impl(key)), tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


def keep_mask(key, rate: float, shape) -> jax.Array:
    """The units kept: True with probability 1 - rate, drawn from ``key`` (float32 uniforms, whatever x's dtype)."""
    return jax.random.bernoulli(key, jnp.float32(1.0 - rate), shape)


@dataclass(frozen=True, eq=False)
class Dropout(Layer):
    """Training: y = x * m / (1 - rate), m_i ~ Bernoulli(1 - rate) drawn from ``key``; evaluation: y = x.

    Attributes:
      rate: the probability of dropping a unit, in [0, 1).
      training: False makes the layer the identity (evaluation).
      key: a PRNG key (typed, or raw uint32 data of shape (2,)); needed in
        training mode when rate > 0. See the module docstring for how a model's
        keys are set.

    No params. Input of any shape; output of the same shape. The mask is
    ``keep_mask(key, rate, x.shape)`` (``jax.random.bernoulli`` on float32
    uniforms), so a key gives the same units for float32 and float64 inputs.
    The scale 1/(1 - rate) keeps E[y] = x ("inverted" dropout), so evaluation
    needs no rescaling.
    """

    rate: float
    training: bool = True
    key: object = None

    def __post_init__(self):
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r < 1:
            raise ValueError(f"Dropout: rate must lie in [0, 1), got {r!r}")
        if not isinstance(self.training, bool):
            raise ValueError(f"Dropout: training must be a bool, got {self.training!r}")
        if self.key is not None:
            object.__setattr__(self, "key", as_key("Dropout", self.key))

    def __hash__(self):
        return hash((type(self), self.rate, self.training, _key_token(self.key)))

    def __eq__(self, other):
        if type(other) is not type(self):  # a subclass (another backward) is another layer, both ways round
            return NotImplemented
        return (self.rate, self.training) == (other.rate, other.training) and _key_token(self.key) == _key_token(
            other.key)

    @property
    def active(self) -> bool:
        """True when the forward drops units (training mode and rate > 0)."""
        return self.training and self.rate > 0

    def forward(self, params, x):
        """x: any shape -> y of x's shape; cache: (the key, or None for the identity; x, whose shape and dtype alone
        are read: under jit nothing of it is kept).

        Caching the key (two words) instead of the mask (one byte per unit)
        trades a second draw of the random bits for the memory of the mask.
        """
        check_no_params(self, params)
        check_array(self, x)
        if not self.active:
            return x, (None, x)
        if self.key is None:
            raise ValueError(_NO_KEY.format(rate=self.rate))
        keep = keep_mask(self.key, self.rate, x.shape)
        return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - self.rate), x.dtype), 0), (self.key, x)

    def backward(self, params, cache, dy):
        """y is linear in x with the diagonal Jacobian m / (1 - rate), so

        .. math::
            dx = dy \\odot m / (1 - rate)

        with the SAME mask m as the forward (redrawn from the cached key);
        a dropped unit passes no gradient. dy: of x's shape; returns ({}, dx).
        """
        del params
        key, x = cache
        check_dy(self, dy, x.shape, x.dtype)  # a dy of another shape would redraw another mask
        if key is None:
            return {}, dy
        keep = keep_mask(key, self.rate, dy.shape)
        return {}, jnp.where(keep, dy * jnp.asarray(1.0 / (1.0 - self.rate), dy.dtype), 0)


def _rebuild(layer, fn):
    """``layer`` with ``fn`` applied to every Dropout inside it (depth first), through ``replace_children``."""
    if isinstance(layer, Dropout):
        return fn(layer)
    kids = children_of(layer)
    if kids and hasattr(layer, "replace_children"):
        return layer.replace_children([_rebuild(child, fn) for _, child in kids])
    return layer


def with_dropout_key(model, key):
    """``model`` with its i-th Dropout (depth first) bound to ``jax.random.fold_in(key, i)``, in training mode.

    ``key`` may be concrete (a hashable model, e.g. for ``compare``) or traced
    (inside a jitted training step). Two Dropouts never share a mask.
    """
    check_layer_object("with_dropout_key", model)
    key = as_key("with_dropout_key", key)
    counter = itertools.count()
    return _rebuild(model, lambda d: dataclasses.replace(d, training=True, key=jax.random.fold_in(key, next(counter))))


def without_dropout(model):
    """``model`` with every Dropout the identity (evaluation mode, no key)."""
    check_layer_object("without_dropout", model)
    return _rebuild(model, lambda d: dataclasses.replace(d, training=False, key=None))
