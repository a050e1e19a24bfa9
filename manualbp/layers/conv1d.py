"""Conv1D: cross-correlation over time on (B, T, C) sequences, and its hand-written backward."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.layers.arguments import check_flag
from manualbp.layers.base import Layer, check_array, check_dy, check_param, check_params, check_positive_int
from manualbp.layers.conv import Conv2D
from manualbp.layers.window import effective, output_size, resolve_padding


def _is_nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class Conv1D(Layer):
    """y[n, o, f] = sum_{i, c} xp[n, o s + i d, c] W[i, c, f] + b[f]: one kernel slid along time.

    Cross-correlation (the kernel is not flipped); xp is x zero-padded by
    ``padding`` along time. The same W[i] meets every position o: weight
    sharing over time, as an RNN shares its weights over steps.

    Attributes:
      features: output channels F.
      kernel_size: k, the number of taps.
      stride: s.
      padding: "SAME" (out = ceil(T / s), the smaller half of the padding in
        front), "VALID" (none), "CAUSAL" ((k - 1) d in front, none behind:
        y[o] sees x up to step o only, out = T for s = 1), an int p (p on
        both sides) or a pair (front, back).
      dilation: d, the spacing of the taps; the kernel spans (k - 1) d + 1 steps.
      use_bias: whether to add b.

    Shapes: x (B, T, C) -> y (B, To, F), To = floor((T + front + back
    - (k - 1) d - 1) / s) + 1. Params: ``W`` (k, C, F) (LeCun normal,
    std 1/sqrt(k C)), ``b`` (F,) (zeros).

    Forward and backward are 1-D convolutions: Conv2D's formulas with one
    spatial axis (``Conv2D._dW`` and ``Conv2D._dx`` take any number).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: str | int | tuple = "SAME"
    dilation: int = 1
    use_bias: bool = True

    def __post_init__(self):
        for field in ("features", "kernel_size", "stride", "dilation"):
            check_positive_int(self.name, field, getattr(self, field))
        check_flag("Conv1D", "use_bias", self.use_bias)
        p = self.padding
        if not (p in ("SAME", "VALID", "CAUSAL") or _is_nonneg_int(p) or (
                isinstance(p, (tuple, list)) and len(p) == 2 and all(map(_is_nonneg_int, p)))):
            raise ValueError(
                f"Conv1D: padding must be 'SAME', 'VALID', 'CAUSAL', an int >= 0 or a pair (front, back) of ints >= 0, "
                f"got {p!r}"
            )

    def _keys(self):
        return ("W", "b") if self.use_bias else ("W",)

    def _pads(self, T):
        """(front, back) padding of the time axis for an input of T steps."""
        span = effective((self.kernel_size,), (self.dilation,))[0]
        if self.padding == "CAUSAL":
            return (span - 1, 0)
        if isinstance(self.padding, (tuple, list)):
            return tuple(int(v) for v in self.padding)
        if isinstance(self.padding, int):
            return (self.padding, self.padding)
        (front_back, _) = resolve_padding(self.padding, (T, 1), (span, 1), (self.stride, 1))
        return front_back

    def output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"Conv1D: expected an input shape (T, C), got {tuple(input_shape)}")
        return (self._geometry(input_shape[0])[4][0], self.features)

    def init(self, key, input_shape, dtype=jnp.float32):
        out_shape = self.output_shape(input_shape)
        C = input_shape[1]
        w = jax.random.normal(key, (self.kernel_size, C, self.features), dtype)
        params = {"W": w / jnp.sqrt(self.kernel_size * C).astype(dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, out_shape

    def _geometry(self, T):
        """(kernel, stride, dilation, pads, out) of the time axis, as 1-tuples (Conv2D's backward helpers take any rank)."""
        (To,) = output_size(self.name, (T,), effective((self.kernel_size,), (self.dilation,)), (self.stride,),
                            (self._pads(T),), what="kernel")
        return (self.kernel_size,), (self.stride,), (self.dilation,), (self._pads(T),), (To,)

    def forward(self, params, x):
        """x: (B, T, C) -> y: (B, To, F); cache: x (dW needs the layer's input)."""
        check_params(self, params, self._keys())
        check_array(self, x, ndim=3)
        B, T, C = x.shape
        k, F = self.kernel_size, self.features
        check_param(self, params, "W", (k, C, F), like=x, why=f"(kernel_size, channels of x, features) = ({k}, {C}, {F})")
        if self.use_bias:
            check_param(self, params, "b", (F,), like=x, why=f"(features,) = ({F},)")
        self.output_shape((T, C))  # a kernel longer than the padded sequence: a ValueError naming Conv1D
        _, stride, dilation, pads, _ = self._geometry(T)
        y = lax.conv_general_dilated(x, params["W"], stride, pads, rhs_dilation=dilation,
                                     dimension_numbers=("NWC", "WIO", "NWC"))
        if self.use_bias:
            y = y + params["b"].reshape(1, 1, -1)
        return y, x

    def backward(self, params, cache, dy):
        """dy: (B, To, F) -> ({"W": (k, C, F), "b": (F,)}, dx: (B, T, C)).

        .. math::
            dW[i, c, f] = \\sum_{n, o} xp[n, o s + i d, c] \\, dy[n, o, f]
            db[f] = \\sum_{n, o} dy[n, o, f]
            dx[n, t, c] = \\sum_{o, i, f:\\; o s + i d = t + front} dy[n, o, f] \\, W[i, c, f]

        dW is a sum over every position o (and example n): the kernel is
        shared over time. dx is the transposed convolution (dy dilated by s,
        correlated with W flipped in time, channels swapped); steps no window
        reached (stride > span, VALID tails) get 0. Both are Conv2D's
        (``Conv2D._dW``, ``Conv2D._dx``) with one spatial axis instead of two.
        """
        x = cache
        B, T, C = x.shape
        kernel, stride, dilation, pads, out = self._geometry(T)
        check_dy(self, dy, (B, *out, self.features), x.dtype)
        grads = {"W": Conv2D._dW(x, dy, kernel, stride, dilation, pads, out)}
        if self.use_bias:
            grads["b"] = jnp.sum(dy, axis=(0, 1))
        return grads, Conv2D._dx(dy, params["W"], (T,), kernel, stride, dilation, pads, out)
