"""ConvTranspose2D: the transposed ("fractionally strided") convolution over NHWC images, as ``lax.conv_transpose``."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.layers.arguments import check_flag
from manualbp.layers.base import Layer, check_array, check_dy, check_param, check_params, check_positive_int
from manualbp.layers.window import check_padding, crop_negative_pads, pair

_DN = ("NHWC", "HWIO", "NHWC")


def transposed_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """(front, back) padding of the stride-dilated input for "SAME" / "VALID" (``lax.conv_transpose``'s rule).

    SAME: k + s - 2 in all, k - 1 in front when s > k - 1 else ceil((k + s - 2) / 2): out = in s.
    VALID: k + s - 2 + max(k - s, 0) in all, k - 1 in front: out = in s + max(k - s, 0).
    """
    if padding == "SAME":
        total = k + s - 2
        front = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        front = k - 1
    return (front, total - front)


def _flip_swap(W):
    """W[::-1, ::-1] with its two channel axes swapped: (kh, kw, A, B) -> (kh, kw, B, A); its own inverse."""
    return jnp.swapaxes(W[::-1, ::-1], 2, 3)


@dataclass(frozen=True)
class ConvTranspose2D(Layer):
    """y = (x dilated by the stride, zero-padded) cross-correlated with W at stride 1, + b.

    .. math::
        y[n, o, p, f] = \\sum_{i, j, c} \\hat x[n, o + i, p + j, c] \\, W[i, j, c, f] + b[f],
        \\qquad \\hat x[n, \\mathrm{top} + h s_h, \\mathrm{left} + w s_w, c] = x[n, h, w, c]

    and \\hat x = 0 elsewhere: x's pixels are spread s apart, so each one
    "paints" a copy of the kernel on the output, the copies s apart and
    overlapping where k > s. That is exactly ``lax.conv_transpose(x, W,
    stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    transpose_kernel=...)``, the convention matched here (and flax's
    ``nn.ConvTranspose``).

    Attributes:
      features: output channels F.
      kernel_size: (kh, kw), or an int.
      stride: (s_h, s_w), or an int: the upsampling factor.
      padding: "SAME" (out = in s), "VALID" (out = in s + max(k - s, 0)),
        lax.conv_transpose's rule for each (``transposed_padding``); or the
        padding of the dilated input x-hat itself: an int p, or ((top, bottom),
        (left, right)). Then out = (in - 1) s + 1 + top + bottom - k + 1.
      use_bias: whether to add b.
      transpose_kernel: False: W is (kh, kw, C, F), used as above. True: W is
        (kh, kw, F, C), the kernel of a Conv2D from F channels to C whose input
        gradient this layer computes; it is flipped in space and its channel
        axes are swapped before use (Keras' ``Conv2DTranspose`` and PyTorch's
        ``ConvTranspose2d`` parameterization). With VALID padding,
        ``ConvTranspose2D(transpose_kernel=True)`` of dy is exactly
        ``Conv2D(padding="VALID").backward``'s dx for the same W.

    Shapes: x (N, H, W, C) -> y (N, Ho, Wo, F). Params: ``W`` as above
    (LeCun normal, std 1/sqrt(kh kw C)), ``b`` (F,) (zeros).
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    padding: str | int | tuple = "SAME"
    use_bias: bool = True
    transpose_kernel: bool = False

    def __post_init__(self):
        check_positive_int("ConvTranspose2D", "features", self.features)
        pair(self.name, "kernel_size", self.kernel_size)
        pair(self.name, "stride", self.stride)
        check_padding(self.name, self.padding)
        if not isinstance(self.transpose_kernel, bool):
            raise ValueError(f"ConvTranspose2D: transpose_kernel must be a bool, got {self.transpose_kernel!r}")
        check_flag("ConvTranspose2D", "use_bias", self.use_bias)

    def _keys(self):
        return ("W", "b") if self.use_bias else ("W",)

    def _geometry(self, size):
        """(kernel, stride, pads, out_size) for a spatial input size (H, W); ValueError when out < 1."""
        kernel = pair(self.name, "kernel_size", self.kernel_size)
        stride = pair(self.name, "stride", self.stride)
        if isinstance(self.padding, str):
            pads = tuple(transposed_padding(k, s, self.padding) for k, s in zip(kernel, stride))
        elif isinstance(self.padding, int):
            pads = ((self.padding,) * 2,) * 2
        else:
            pads = tuple(tuple(int(v) for v in p) for p in self.padding)
        out = tuple((n - 1) * s + 1 + lo + hi - k + 1 for n, k, s, (lo, hi) in zip(size, kernel, stride, pads))
        if any(n < 1 for n in size) or any(o < 1 for o in out):
            raise ValueError(
                f"ConvTranspose2D: kernel {kernel} is larger than the stride-dilated, padded input (input "
                f"{tuple(size)}, stride {stride}, padding {pads}): output size {out}"
            )
        return kernel, stride, pads, out

    def _kernel_shape(self, C):
        kh, kw = pair(self.name, "kernel_size", self.kernel_size)
        return (kh, kw, self.features, C) if self.transpose_kernel else (kh, kw, C, self.features)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"ConvTranspose2D: expected an input shape (H, W, C), got {tuple(input_shape)}")
        return (*self._geometry(tuple(input_shape[:2]))[3], self.features)

    def init(self, key, input_shape, dtype=jnp.float32):
        out_shape = self.output_shape(input_shape)
        shape = self._kernel_shape(input_shape[2])
        fan_in = shape[0] * shape[1] * input_shape[2]
        params = {"W": jax.random.normal(key, shape, dtype) / jnp.sqrt(fan_in).astype(dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, out_shape

    def _W(self, params):
        """The kernel as used, (kh, kw, C, F)."""
        return _flip_swap(params["W"]) if self.transpose_kernel else params["W"]

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, Ho, Wo, F); cache: x (dW needs the layer's input)."""
        check_params(self, params, self._keys())
        check_array(self, x, ndim=4)
        order = "(kh, kw, features, channels of x)" if self.transpose_kernel else "(kh, kw, channels of x, features)"
        shape = self._kernel_shape(x.shape[3])
        check_param(self, params, "W", shape, like=x, why=f"{order} = {shape}")
        if self.use_bias:
            check_param(self, params, "b", (self.features,), like=x, why=f"(features,) = ({self.features},)")
        _, stride, pads, _ = self._geometry(x.shape[1:3])
        y = lax.conv_general_dilated(x, self._W(params), (1, 1), pads, lhs_dilation=stride, dimension_numbers=_DN)
        if self.use_bias:
            y = y + params["b"].reshape(1, 1, 1, -1)
        return y, x

    def backward(self, params, cache, dy):
        """Backprop through the transposed convolution, dy = dL/dy of shape (N, Ho, Wo, F).

        .. math::
            dx[n, h, w, c] = \\sum_{i, j, f} dy[n, h s_h + top - i, w s_w + left - j, f] \\, W[i, j, c, f]
            dW[i, j, c, f] = \\sum_{n, o, p} \\hat x[n, o + i, p + j, c] \\, dy[n, o, p, f]
            db[f] = \\sum_{n, o, p} dy[n, o, p, f]

        (terms with dy's indices outside [0, Ho) x [0, Wo) are 0). dx is an
        ordinary STRIDED convolution: dy padded by (k - 1 - top, k - 1 - bottom)
        (negative: cropped), correlated at stride s with W flipped in space and
        with its channel axes swapped; pixel x[h] only ever met the outputs
        its kernel copy was painted on, h s + top - i. dW sums over every input
        pixel and example (each pixel paints every weight): a correlation of dy
        with x used as the kernel, dilated by the stride (so no multiply ever
        meets an inserted zero, which correlating the zero-filled x-hat with dy
        would do: slower, BENCHMARKS.md), the batch axis contracted like a channel. With ``transpose_kernel`` the gradient of the stored W
        is dW flipped and swapped back.
        """
        x = cache
        W = self._W(params)
        kernel, stride, pads, out = self._geometry(x.shape[1:3])
        check_dy(self, dy, (x.shape[0], *out, self.features), x.dtype)
        dyc, dx_pads = crop_negative_pads(dy, [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel, pads)])
        dx = lax.conv_general_dilated(dyc, W[::-1, ::-1], stride, dx_pads, dimension_numbers=("NHWC", "HWOI", "NHWC"))
        # x as the kernel, dilated by the stride, slid over dy: r[a] = sum_h dy[a + h s - (k - 1 - top)] x[h], so
        # tap i = k - 1 - a: dW = r flipped, its (F, C) axes swapped to (C, F); with transpose_kernel the stored W
        # is that flipped and swapped once more, so its gradient is r itself
        w_pads = [(k - 1 - lo, (n - 1) * s + lo + 1 - o) for k, (lo, _), s, n, o in zip(kernel, pads, stride, x.shape[1:3], out)]
        dyc, w_pads = crop_negative_pads(dy, w_pads)
        r = lax.conv_general_dilated(dyc, x, (1, 1), w_pads, rhs_dilation=stride, dimension_numbers=("CHWN", "IHWO", "HWNC"))
        grads = {"W": r if self.transpose_kernel else _flip_swap(r)}
        if self.use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1, 2))
        return grads, dx
