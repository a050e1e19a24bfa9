"""Computational-graph nodes with two inputs: Add and Multiply.

Their input is a pair ``(a, b)`` (e.g. from ``Parallel``); shapes must be
equal, nothing is broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, describe


def _check_pair(layer, params, x):
    check_no_params(layer, params)
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(f"{layer.name}: expected a pair (a, b) of arrays, got {type(x).__name__}")
    a, b = x
    check_array(layer, a, what="a")
    check_array(layer, b, what="b")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(
            f"{layer.name}: expected a and b of one shape and dtype, got a {describe(a)} and b {describe(b)}"
        )
    return a, b


@dataclass(frozen=True)
class Add(Layer):
    """y = a + b. The add node passes the upstream gradient through unchanged."""

    def output_shape(self, input_shape):
        return tuple(input_shape[0])

    def forward(self, params, x):
        a, b = _check_pair(self, params, x)
        return a + b, a  # only a's shape and dtype are read (under jit nothing is kept)

    def backward(self, params, cache, dy):
        """da = dy, db = dy."""
        check_dy(self, dy, cache.shape, cache.dtype)
        return {}, (dy, dy)


@dataclass(frozen=True)
class Multiply(Layer):
    """y = a * b. The multiply node scales the upstream gradient by the OTHER input,
    so it must keep both forward inputs."""

    def output_shape(self, input_shape):
        return tuple(input_shape[0])

    def forward(self, params, x):
        a, b = _check_pair(self, params, x)
        return a * b, (a, b)

    def backward(self, params, cache, dy):
        """da = dy * b, db = dy * a."""
        a, b = cache
        check_dy(self, dy, a.shape, a.dtype)
        return {}, (dy * b, dy * a)
