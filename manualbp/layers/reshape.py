"""Flatten: (N, d1, ..., dk) -> (N, d1 ... dk), the bridge from convolutions to Dense."""

from __future__ import annotations

import math
from dataclasses import dataclass

from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, spec


@dataclass(frozen=True)
class Flatten(Layer):
    """y = x.reshape(N, -1): every axis but the batch axis folded into one, row-major.

    Shapes: x (N, d1, ..., dk) -> y (N, d1 ... dk). No params.
    """

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, params, x):
        """x: (N, d1, ..., dk) -> y: (N, d1 ... dk); cache: x's shape and dtype."""
        check_no_params(self, params)
        check_array(self, x, min_ndim=2)
        return x.reshape(x.shape[0], -1), spec(x)

    def backward(self, params, cache, dy):
        """dx = dy.reshape(x.shape), (N, d1 ... dk) -> (N, d1, ..., dk): a reshape's adjoint is the inverse reshape."""
        check_dy(self, dy, (cache.shape[0], math.prod(cache.shape[1:])), cache.dtype)
        return {}, dy.reshape(cache.shape)
