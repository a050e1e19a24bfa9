"""PositionalEmbedding: a learned vector per position, added to a sequence of features."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.base import Layer, check_array, check_dtype_match, check_dy, check_param, check_params, check_positive_int


@dataclass(frozen=True)
class PositionalEmbedding(Layer):
    """y[b, t, :] = x[b, t, :] + P[t, :] for t < T: GPT's learned position table, after the token embedding.

    Attributes:
      max_len: the longest sequence the table covers (rows of P).
      features: F, the width of x and of each row.

    Params: ``P`` of shape (max_len, F), normal with std 0.02 (GPT-2's).
    Input x of shape (B, T, F) with T <= max_len; output of the same shape.
    A sequence longer than ``max_len`` is a ValueError: there is no learned
    row for its later positions.
    """

    max_len: int
    features: int

    def __post_init__(self):
        for field in ("max_len", "features"):
            check_positive_int("PositionalEmbedding", field, getattr(self, field))

    def _check_length(self, T, shape):
        if T > self.max_len:
            raise ValueError(
                f"PositionalEmbedding: sequence length T = {T} exceeds max_len = {self.max_len} "
                f"(x of shape {shape}); build the layer with a larger max_len"
            )

    def init(self, key, input_shape, dtype=jnp.float32):
        if len(input_shape) != 2 or input_shape[1] != self.features:
            raise ValueError(
                f"PositionalEmbedding: expected an input shape (T, {self.features}) (batch excluded), got {tuple(input_shape)}"
            )
        self._check_length(input_shape[0], tuple(input_shape))
        P = 0.02 * jax.random.normal(key, (self.max_len, self.features), dtype)
        return {"P": P}, tuple(input_shape)

    def forward(self, params, x):
        """x: (B, T, F) -> y = x + P[:T] of x's shape; cache: x (only its shape and dtype are read)."""
        check_params(self, params, ("P",))
        check_array(self, x, ndim=3)
        check_param(self, params, "P", (self.max_len, self.features), like=x, why="(max_len, features)")
        B, T, F = x.shape
        if F != self.features:
            raise ValueError(f"PositionalEmbedding: expected x of shape (B, T, {self.features}), got {tuple(x.shape)}")
        self._check_length(T, tuple(x.shape))
        check_dtype_match(self, x, params["P"], wname="P")
        return x + params["P"][None, :T], x

    def backward(self, params, cache, dy):
        """The add node once more, with P[t] shared by every sequence of the batch:

        .. math::
            dx = dy, \\qquad dP[t] = \\sum_b dy[b, t] \\ (t < T), \\qquad dP[t] = 0 \\ (T \\le t < max\\_len)

        (a shared weight's gradient is the sum over its uses). dy: (B, T, F);
        returns ({"P": (max_len, F)}, dx (B, T, F)).
        """
        del params
        check_dy(self, dy, cache.shape, cache.dtype)
        T = dy.shape[1]
        dP = jnp.sum(dy, axis=0)
        if T < self.max_len:
            dP = jnp.concatenate([dP, jnp.zeros((self.max_len - T, self.features), dy.dtype)], axis=0)
        return {"P": dP}, dy
