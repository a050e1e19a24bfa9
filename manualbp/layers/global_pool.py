"""GlobalAvgPool2D and GlobalMaxPool2D: one value per channel from the whole image, (N, H, W, C) -> (N, C)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax

from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, spec


class _GlobalPool2D(Layer):
    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected an input shape (H, W, C), got {tuple(input_shape)}")
        if input_shape[0] * input_shape[1] == 0:
            raise ValueError(f"{self.name}: expected an image of at least one pixel, got input shape {tuple(input_shape)}")
        return (input_shape[2],)

    def _check(self, params, x):
        check_no_params(self, params)
        check_array(self, x, ndim=4)
        self.output_shape(x.shape[1:])

    def _check_dy(self, x, dy):
        check_dy(self, dy, (x.shape[0], x.shape[3]), x.dtype)


@dataclass(frozen=True)
class GlobalAvgPool2D(_GlobalPool2D):
    """y[n, c] = (1 / (H W)) sum_{h, w} x[n, h, w, c]: the mean of each channel (what a ResNet puts before its head).

    Shapes: x (N, H, W, C) -> y (N, C). No params.
    """

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, C); cache: x's shape and dtype (backward needs nothing else)."""
        self._check(params, x)
        return jnp.mean(x, axis=(1, 2)), spec(x)

    def backward(self, params, cache, dy):
        """Every pixel gets an equal share of its channel's gradient.

        .. math::
            dx[n, h, w, c] = dy[n, c] / (H W)
        """
        x = cache
        self._check_dy(x, dy)
        shape = x.shape
        g = dy / jnp.array(shape[1] * shape[2], dy.dtype)
        return {}, jnp.broadcast_to(g[:, None, None, :], shape)


@dataclass(frozen=True)
class GlobalMaxPool2D(_GlobalPool2D):
    """y[n, c] = max_{h, w} x[n, h, w, c]: the largest value of each channel.

    The winner is the FIRST maximum in row-major order (h, then w), as
    ``MaxPool2D``'s and as ``jax.grad`` of ``lax.reduce_window`` max (one
    window covering the image): ties send the whole gradient to one pixel,
    never split it (``jax.grad`` of ``jnp.max`` would split it) or copy it.
    A NaN counts as the largest value, so y propagates it.

    Shapes: x (N, H, W, C) -> y (N, C). No params.
    """

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, C); cache: (winner, x's shape and dtype).

        winner[n, c] = h* W + w*, the row-major index of the first maximum
        (int32): all that backward needs.
        """
        self._check(params, x)
        N, H, W, C = x.shape
        flat = x.reshape(N, H * W, C)
        winner = jnp.argmax(flat, axis=1).astype(jnp.int32)  # the first maximum (NaN first, if any)
        y = jnp.take_along_axis(flat, winner[:, None, :], axis=1)[:, 0]
        return y, (winner, spec(x))

    def backward(self, params, cache, dy):
        """All of dy[n, c] goes to the channel's winner.

        .. math::
            dx[n, h, w, c] = dy[n, c] \\, [h W + w = \\text{winner}[n, c]]
        """
        winner, x = cache
        self._check_dy(x, dy)
        shape = x.shape
        N, H, W, C = shape
        pixel = lax.broadcasted_iota(jnp.int32, (1, H * W, 1), 1)
        dx = jnp.where(pixel == winner[:, None, :], dy[:, None, :], jnp.zeros((), dy.dtype))
        return {}, dx.reshape(shape)

    def kink_pattern(self, cache):
        """The winner's row-major pixel index h W + w for every (n, c): (N, C) int32."""
        return cache[0]
