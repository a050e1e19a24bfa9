"""Softmax as a layer: y = softmax(x) along one axis, and its Jacobian-vector product by hand."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from manualbp.layers.base import Layer, check_array, check_dy, check_no_params


@dataclass(frozen=True)
class Softmax(Layer):
    """y_i = e^(x_i - max x) / sum_j e^(x_j - max x) along ``axis`` (the max cancels; it keeps e^. finite).

    Attributes:
      axis: the axis normalized over (default the last).

    No params. Input of any rank containing ``axis``; output of the same shape.
    For a loss on probabilities, prefer logits into ``SoftmaxCrossEntropy``
    (its dz = softmax - c needs no Jacobian); this layer is for softmax in the
    middle of a model (attention weights, mixtures, gates).
    """

    axis: int = -1

    def __post_init__(self):
        if not isinstance(self.axis, int) or isinstance(self.axis, bool):
            raise ValueError(f"Softmax: axis must be an int, got {self.axis!r}")

    def _check(self, x):
        check_array(self, x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"Softmax: axis {self.axis} is out of range for x of shape {tuple(x.shape)}")

    def forward(self, params, x):
        """x: (..., n, ...) -> y of x's shape, each slice along ``axis`` summing to 1; cache: y."""
        check_no_params(self, params)
        self._check(x)
        e = jnp.exp(x - jnp.max(x, axis=self.axis, keepdims=True))
        y = e / jnp.sum(e, axis=self.axis, keepdims=True)
        return y, y

    def backward(self, params, cache, dy):
        """The softmax Jacobian dy_i/dx_j = y_i (delta_ij - y_j), applied to dy without forming it:

        .. math::
            dx_j = \\sum_i dy_i\\, y_i (\\delta_{ij} - y_j) = y_j (dy_j - \\sum_i dy_i y_i)

        One reduction per slice (sum dy y), so O(n) work instead of the n x n
        Jacobian. dy: of y's shape; returns ({}, dx of y's shape).
        """
        del params
        y = cache
        check_dy(self, dy, y.shape, y.dtype)
        return {}, y * (dy - jnp.sum(dy * y, axis=self.axis, keepdims=True))
