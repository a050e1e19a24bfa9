"""Dense (fully connected) layer: y = x @ W + b on the last axis."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.arguments import check_flag
from manualbp.layers.base import (
    Layer,
    check_array,
    check_dy,
    check_input_width,
    check_param,
    check_params,
    check_positive_int,
)


@dataclass(frozen=True)
class Dense(Layer):
    """y = x W + b, acting on the last axis (so it is time-distributed on (B, T, D)).

    Attributes:
      features: output width ``out``.
      use_bias: whether to add ``b``.

    Params: ``W`` of shape (in, out) (LeCun-normal init, std 1/sqrt(in)),
    ``b`` of shape (out,) (zeros).
    """

    features: int
    use_bias: bool = True

    def __post_init__(self):
        check_positive_int("Dense", "features", self.features)
        check_flag("Dense", "use_bias", self.use_bias)

    def _keys(self):
        return ("W", "b") if self.use_bias else ("W",)

    def init(self, key, input_shape, dtype=jnp.float32):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: expected an input shape of rank >= 1, got {tuple(input_shape)}")
        fan_in = input_shape[-1]
        params = {"W": jax.random.normal(key, (fan_in, self.features), dtype) / jnp.asarray(math.sqrt(fan_in), dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, (*input_shape[:-1], self.features)

    def forward(self, params, x):
        """x: (..., in) -> y: (..., out); cache: x (BP4 needs the layer's input a^(l-1))."""
        check_params(self, params, self._keys())
        check_array(self, x)
        check_input_width(self, params, "W", x, (None, self.features))
        check_param(self, params, "W", (x.shape[-1], self.features), like=x, why="(in, features)")
        if self.use_bias:
            check_param(self, params, "b", (self.features,), like=x, why="(features,)")
        y = x @ params["W"]
        if self.use_bias:
            y = y + params["b"][(None,) * (y.ndim - 1)]  # explicit broadcast over leading axes
        return y, x

    def backward(self, params, cache, dy):
        """Backprop through z = a W + b, with delta = dy = dL/dz of shape (..., out).

        .. math::
            \\partial L/\\partial W = a^T \\delta  \\quad (BP4, summed over batch and time)
            \\partial L/\\partial b = \\sum_n \\delta_n  \\quad (BP3)
            \\partial L/\\partial a = \\delta W^T    \\quad (BP2 before the activation's f'(z))

        Every leading axis is folded into one row axis so each gradient is one
        matmul over the whole minibatch, not a loop over examples.
        """
        x = cache
        check_dy(self, dy, (*x.shape[:-1], self.features), x.dtype)
        W = params["W"]
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
        grads = {"W": x2.T @ dy2}  # BP4: sum_n a_n^T delta_n
        if self.use_bias:
            grads["b"] = jnp.sum(dy2, axis=0)  # BP3
        dx = dy @ W.T  # BP2: W^T delta
        return grads, dx
