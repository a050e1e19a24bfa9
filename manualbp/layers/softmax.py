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
        """The softmax Jacobian dy_i/dx_j = y_i (delta_ij - y_j), applied to dy without forming it (``softmax_vjp``):

        .. math::
            dx_j = \\sum_i dy_i\\, y_i (\\delta_{ij} - y_j) = y_j (dy_j - \\sum_i dy_i y_i)

        O(n) work per slice instead of the n x n Jacobian. dy: of y's shape; returns ({}, dx of y's shape).
        """
        del params
        check_dy(self, dy, cache.shape, cache.dtype)
        return {}, softmax_vjp(cache, dy, self.axis)


def softmax_vjp(y, dy, axis):
    """dx = y (dy - D), D = sum_i dy_i y_i along ``axis``, computed in two passes so that it does not cancel.

    .. math::
        u = dy - \\hat D,\\quad \\hat D = \\mathrm{fl}\\Big(\\sum_i dy_i y_i\\Big);\\qquad
        dx = y \\odot \\Big(u - \\sum_i u_i y_i\\Big)

    Exact for any shift: since sum_i y_i = 1, replacing dy by dy - c (c constant along the slice) gives
    y ((dy - c) - sum_i (dy_i - c) y_i) = y (dy - D), the same dx. The one-pass y (dy - D) loses it where
    one y_k is near 1: then D = dy_k y_k + (the rest) is close to dy_k, and dy_k - D, whose size is about
    (1 - y_k) |dy|, keeps only the absolute error of D (and of y_k's rounding) of about eps |dy|: relative
    error eps / (1 - y_k) in dx_k (Softmax over 5 logits of scale 5, float64: 5e-10 where jax.grad had
    ~1e-15). Shifting by the computed D-hat (whatever its rounding) makes u the deviation of dy from its
    y-weighted mean: u_k = dy_k - D-hat is exact up to one rounding of a small number, and the second sum,
    and every product with y, now carry errors proportional to |u|, about (1 - y_k) |dy|, not to |dy|.
    It is one step of iterative refinement; where no y_k dominates, u and dy are of one size and the two
    passes are as accurate as one. Measured against a 50-digit truth in tests/test_accuracy.py and
    docs/accuracy.md. The same rule is attention's dS = P (dP - D) row by row (``flash``).
    """
    u = dy - jnp.sum(dy * y, axis=axis, keepdims=True)
    return y * (u - jnp.sum(u * y, axis=axis, keepdims=True))
