"""Embedding: integer ids -> rows of a learned table; backward scatter-adds into the table."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.base import (
    Layer,
    as_index,
    check_dy,
    check_param,
    check_params,
    check_positive_int,
    check_values,
    describe,
    is_concrete,
)


@dataclass(frozen=True)
class Embedding(Layer):
    """y[..., :] = E[ids[...], :]: a lookup, i.e. a Dense layer on one-hot(ids) without the matmul.

    Attributes:
      vocab: V, the number of ids (ids lie in [0, V)).
      features: F, the width of each row.

    Params: ``E`` of shape (V, F), standard normal.

    Input: integer ids of shape (B, ...) (usually (B, T)); output (B, ..., F).
    The ids get no gradient: ``backward`` returns dx = None.
    """

    vocab: int
    features: int

    def __post_init__(self):
        for field in ("vocab", "features"):
            check_positive_int("Embedding", field, getattr(self, field))

    def output_shape(self, input_shape):
        return (*input_shape, self.features)

    def init(self, key, input_shape, dtype=jnp.float32):
        return {"E": jax.random.normal(key, (self.vocab, self.features), dtype)}, self.output_shape(input_shape)

    def _check_ids(self, x):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"Embedding: expected integer ids as an array, got {type(x).__name__}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(
                f"Embedding: expected integer ids, got {describe(x)}; ids index rows of E, "
                f"cast them, e.g. x.astype(jnp.int32)"
            )
        if x.ndim < 1:
            raise ValueError(f"Embedding: expected ids of rank >= 1 (batch first), got shape {tuple(x.shape)}")
        V = self.vocab
        check_values(self.name, f"ids must lie in [0, {V}) (E has shape ({V}, {self.features}))", x,
                     lambda v: (v < 0) | (v >= V))

    def check_input(self, params, x):
        """Raise a ValueError if concrete ids lie outside [0, vocab) (what ``forward`` raises, before any jit)."""
        del params
        if is_concrete(x):
            self._check_ids(x)

    def forward(self, params, x):
        """ids x: integers (B, ...) of any integer dtype -> y = E[x]: (B, ..., F); cache: the ids as int32/int64.

        Out-of-range ids raise when x is concrete. Under ``jax.jit`` they cannot
        be inspected: there an out-of-range id (negative ones included) reads a
        row of NaN (so the loss is NaN, never a plausible number) and adds nothing
        to dE; within ``checkify_values()`` under ``jax.experimental.checkify`` it is an error. The ids are
        widened first (``as_index``): uint8 ids compared with vocab 257 in uint8
        would wrap around.
        """
        check_params(self, params, ("E",))
        self._check_ids(x)
        check_param(self, params, "E", (self.vocab, self.features), why="(vocab, features)")
        E = params["E"]
        ids = as_index(x)
        safe = jnp.where((ids >= 0) & (ids < self.vocab), ids, self.vocab)  # out of range -> V: gather fills, scatter drops
        return E.at[safe].get(mode="fill", fill_value=jnp.nan), safe

    def backward(self, params, cache, dy):
        """Scatter-add: dE[v] = sum of dy[n] over every position n with ids[n] = v; no gradient for the ids.

        .. math::
            \\partial L/\\partial E = \\mathrm{onehot}(ids)^T \\, \\delta
            \\quad (BP4 of a Dense layer on one-hot inputs; an id used k times gets k contributions)
        """
        ids = cache
        E = params["E"]
        check_dy(self, dy, (*ids.shape, E.shape[1]), E.dtype)
        dE = jnp.zeros_like(E).at[ids.reshape(-1)].add(dy.reshape(-1, E.shape[1]), mode="drop")
        return {"E": dE}, None
