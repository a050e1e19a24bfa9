"""Conv2D: 2-D cross-correlation over NHWC images with an HWIO kernel, and its hand-written backward."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

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
from manualbp.layers.window import check_padding, effective, output_size, pair, resolve_padding

# im2col + one matmul beats XLA CPU's weight-gradient convolution when a patch row is short (BENCHMARKS.md)
_IM2COL_MAX_PATCH = 32
_SPATIAL = {1: "W", 2: "HW"}  # the letters of the spatial axes in lax's dimension numbers


@dataclass(frozen=True)
class Conv2D(Layer):
    """y[n, o, p, f] = sum_{i, j, c} xp[n, o s_h + i d_h, p s_w + j d_w, c] W[i, j, c, f] + b[f].

    Cross-correlation (the kernel is not flipped), as in every deep learning
    library; xp is x zero-padded by ``padding``.

    Attributes:
      features: output channels F.
      kernel_size: (kh, kw), or an int for a square kernel.
      stride: (s_h, s_w) or an int.
      padding: "SAME" (out = ceil(in / s), smaller half of the padding on
        top/left), "VALID" (no padding), an int p (p on every side), or
        ((top, bottom), (left, right)).
      dilation: kernel dilation (d_h, d_w) or an int; the kernel spans
        (k - 1) d + 1 input pixels.
      use_bias: whether to add b.

    Shapes: x (N, H, W, C) -> y (N, Ho, Wo, F), Ho = floor((H + top + bottom
    - (kh - 1) d_h - 1) / s_h) + 1. Params: ``W`` (kh, kw, C, F) (LeCun
    normal, std 1/sqrt(kh kw C)), ``b`` (F,) (zeros).
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    padding: str | int | tuple = "SAME"
    dilation: int | tuple[int, int] = 1
    use_bias: bool = True

    def __post_init__(self):
        check_positive_int("Conv2D", "features", self.features)
        pair(self.name, "kernel_size", self.kernel_size)
        pair(self.name, "stride", self.stride)
        pair(self.name, "dilation", self.dilation)
        check_padding(self.name, self.padding)
        check_flag("Conv2D", "use_bias", self.use_bias)

    def _keys(self):
        return ("W", "b") if self.use_bias else ("W",)

    def _geometry(self, size):
        """(kernel, stride, dilation, pads, out_size) for a spatial input size (H, W)."""
        kernel = pair(self.name, "kernel_size", self.kernel_size)
        stride = pair(self.name, "stride", self.stride)
        dilation = pair(self.name, "dilation", self.dilation)
        span = effective(kernel, dilation)
        pads = resolve_padding(self.padding, size, span, stride)
        out = output_size(self.name, size, span, stride, pads, what="kernel")
        return kernel, stride, dilation, pads, out

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D: expected an input shape (H, W, C), got {tuple(input_shape)}")

    def output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        return (*self._geometry(tuple(input_shape[:2]))[4], self.features)

    def init(self, key, input_shape, dtype=jnp.float32):
        out_shape = self.output_shape(input_shape)
        kh, kw = pair(self.name, "kernel_size", self.kernel_size)
        fan_in = kh * kw * input_shape[2]
        w = jax.random.normal(key, (kh, kw, input_shape[2], self.features), dtype)
        params = {"W": w / jnp.sqrt(fan_in).astype(dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, out_shape

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, Ho, Wo, F); cache: x (dW needs the layer's input)."""
        check_params(self, params, self._keys())
        check_array(self, x, ndim=4)
        W = params["W"]
        kh, kw = pair(self.name, "kernel_size", self.kernel_size)
        check_input_width(self, params, "W", x, (kh, kw, None, self.features), says="x with {} channels", note=", HWIO")
        check_param(self, params, "W", (kh, kw, x.shape[3], self.features), like=x, why="(kh, kw, C, features), HWIO")
        if self.use_bias:
            check_param(self, params, "b", (self.features,), like=x, why="(features,)")
        _, stride, dilation, pads, _ = self._geometry(x.shape[1:3])
        y = lax.conv_general_dilated(
            x, W, stride, pads, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if self.use_bias:
            y = y + params["b"].reshape(1, 1, 1, -1)  # (F,) on every position, no rank promotion
        return y, x

    def backward(self, params, cache, dy):
        """Backprop through the cross-correlation, with dy = dL/dy of shape (N, Ho, Wo, F).

        .. math::
            dW[i, j, c, f] = \\sum_{n, o, p} xp[n, o s_h + i d_h, p s_w + j d_w, c] \\, dy[n, o, p, f]
            db[f] = \\sum_{n, o, p} dy[n, o, p, f]
            dx[n, h, w, c] = \\sum_{o, p, i, j, f:\\; o s_h + i d_h = h + top,\\; p s_w + j d_w = w + left}
                             dy[n, o, p, f] \\, W[i, j, c, f]

        A weight is shared by every output position, so its gradient is the
        sum over all of them (and over the batch). dx is the transposed
        convolution: dy dilated by the stride, correlated with the kernel
        flipped in space and with its channel axes swapped, padded so that
        it lands on the unpadded input (pixels no window reached get 0).
        dW is one matmul of the im2col patches with dy when a patch row is
        short (kh kw C <= 32), otherwise a convolution of x with dy in which
        the batch axis is the contracted "channel" axis.
        """
        x = cache
        W = params["W"]
        kernel, stride, dilation, pads, out = self._geometry(x.shape[1:3])
        check_dy(self, dy, (x.shape[0], *out, self.features), x.dtype)
        grads = {"W": self._dW(x, dy, kernel, stride, dilation, pads, out)}
        if self.use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        return grads, self._dx(dy, W, x.shape[1:3], kernel, stride, dilation, pads, out)

    @staticmethod
    def _dx(dy, W, size, kernel, stride, dilation, pads, out):
        """Transposed convolution: dx = (dy dilated by s) correlated with W flipped, channels swapped.

        Any number n of spatial axes (Conv1D calls it with n = 1): dy (N, *out, F), W (*kernel, C, F).
        Where dy is smaller than the kernel along an axis (o < k: a width-1 input, padding >= kernel, a
        stride beyond the input), XLA CPU's simplifier swaps the operands of that convolution and emits an
        invalid one that aborts the process; there dx is the adjoint of im2col instead (``_dx_col2im``).
        """
        if any(o < k for o, k in zip(out, kernel, strict=True)):
            return Conv2D._dx_col2im(dy, W, size, stride, dilation, pads)
        tr_pads = []
        for n, k, (lo, _), s, d, o in zip(size, kernel, pads, stride, dilation, out, strict=True):
            low = (k - 1) * d - lo  # flipped kernel tap (k-1-i) meets dy[o] at h = o s + i d - lo
            tr_pads.append((low, n - (o - 1) * s - 1 - low + (k - 1) * d))  # output length exactly n
        sp = _SPATIAL[len(size)]
        return lax.conv_general_dilated(
            dy, W[(slice(None, None, -1),) * len(size)], (1,) * len(size), tr_pads, lhs_dilation=stride,
            rhs_dilation=dilation, dimension_numbers=(f"N{sp}C", f"{sp}OI", f"N{sp}C"),
        )

    @staticmethod
    def _dx_col2im(dy, W, size, stride, dilation, pads):
        """dx as the adjoint of im2col: dcols = dy W^T, each tap's slab put back where its slice of xp came from.

        Tap (i, j) read xp[n, o s_h + i d_h, p s_w + j d_w, :], i.e. x at row o s_h + i d_h - top: its gradient
        dy W[i, j]^T (N, Ho, Wo, C) is spread with s - 1 zeros between rows/columns and shifted there (a
        negative pad crops what fell in the padding); the taps' contributions add. Any number of spatial axes.
        """
        kernel, (C, F) = W.shape[:-2], W.shape[-2:]
        N, out = dy.shape[0], dy.shape[1:-1]
        dcols = (dy.reshape(-1, F) @ W.reshape(-1, F).T).reshape(N, *out, math.prod(kernel), C)
        zero = jnp.zeros((), dy.dtype)
        dx = None
        for tap, offsets in enumerate(itertools.product(*map(range, kernel))):
            cfg = [(0, 0, 0)]
            for n, o, (lo, _), s, t in zip(size, out, pads, stride, (i * d for i, d in zip(offsets, dilation)),
                                           strict=True):
                cfg.append((t - lo, n + lo - t - (o - 1) * s - 1, s - 1))
            term = lax.pad(dcols[..., tap, :], zero, [*cfg, (0, 0, 0)])
            dx = term if dx is None else dx + term
        return dx

    @staticmethod
    def _dW(x, dy, kernel, stride, dilation, pads, out):
        """dW[i, j, c, f] = sum_{n, o, p} xp[n, o s + i d, p s + j d, c] dy[n, o, p, f] (any number of spatial axes)."""
        C, F = x.shape[-1], dy.shape[-1]
        if math.prod(kernel) * C <= _IM2COL_MAX_PATCH:
            xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
            cols = [xp[(slice(None), *(slice(i * d, i * d + (o - 1) * s + 1, s)
                                       for i, d, o, s in zip(offsets, dilation, out, stride, strict=True)))]
                    for offsets in itertools.product(*map(range, kernel))]
            patches = jnp.concatenate(cols, axis=-1).reshape(-1, math.prod(kernel) * C)  # (N Ho Wo, kh kw C)
            return (patches.T @ dy.reshape(-1, F)).reshape(*kernel, C, F)
        # x as lhs with batch <-> channel swapped; dy as a kernel dilated by the stride
        w_pads = [(lo, (k - 1) * d + (o - 1) * s + 1 - n - lo)
                  for n, k, (lo, _), s, d, o in zip(x.shape[1:-1], kernel, pads, stride, dilation, out, strict=True)]
        sp = _SPATIAL[len(kernel)]
        return lax.conv_general_dilated(
            x, dy, dilation, w_pads, rhs_dilation=stride, dimension_numbers=(f"C{sp}N", f"I{sp}O", f"{sp}NC")
        )
