"""Conv1D: cross-correlation over time on (B, T, C) sequences, run as a Conv2D over a (1, T) image."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.base import Layer, check_array, check_param, check_params
from manualbp.layers.conv import Conv2D
from manualbp.layers.window import effective, output_size, resolve_padding


def _positive_int(layer, what, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {v!r}")
    return v


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

    It runs as ``Conv2D`` on x viewed as a one-row image (B, 1, T, C) with the
    kernel (1, k, C, F): the same numbers, so forward and backward are that
    layer's (see ``Conv2D.backward`` for dW, db and dx written out); only the
    views change, and they are free reshapes. (Time on the image's width, not
    its height: XLA CPU's convolutions measured 1.4-1.8x faster that way.)
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: str | int | tuple = "SAME"
    dilation: int = 1
    use_bias: bool = True

    def __post_init__(self):
        _positive_int(self.name, "features", self.features)
        _positive_int(self.name, "kernel_size", self.kernel_size)
        _positive_int(self.name, "stride", self.stride)
        _positive_int(self.name, "dilation", self.dilation)
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

    def _conv2d(self, T):
        """The Conv2D this layer runs as, for inputs of T steps (its padding made explicit)."""
        return Conv2D(self.features, (1, self.kernel_size), (1, self.stride), ((0, 0), self._pads(T)),
                      (1, self.dilation), self.use_bias)

    def output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"Conv1D: expected an input shape (T, C), got {tuple(input_shape)}")
        T = input_shape[0]
        span = effective((self.kernel_size,), (self.dilation,))
        (To,) = output_size(self.name, (T,), span, (self.stride,), (self._pads(T),), what="kernel")
        return (To, self.features)

    def init(self, key, input_shape, dtype=jnp.float32):
        out_shape = self.output_shape(input_shape)
        C = input_shape[1]
        w = jax.random.normal(key, (self.kernel_size, C, self.features), dtype)
        params = {"W": w / jnp.sqrt(self.kernel_size * C).astype(dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, out_shape

    def forward(self, params, x):
        """x: (B, T, C) -> y: (B, To, F); cache: the Conv2D's (x itself, viewed as (B, 1, T, C))."""
        check_params(self, params, self._keys())
        check_array(self, x, ndim=3)
        B, T, C = x.shape
        k, F = self.kernel_size, self.features
        check_param(self, params, "W", (k, C, F), like=x, why=f"(kernel_size, channels of x, features) = ({k}, {C}, {F})")
        if self.use_bias:
            check_param(self, params, "b", (F,), like=x, why=f"(features,) = ({F},)")
        self.output_shape((T, C))  # a kernel longer than the padded sequence: a ValueError naming Conv1D
        y, cache = self._conv2d(T).forward(self._params2d(params), x.reshape(B, 1, T, C))
        return y.reshape(B, y.shape[2], F), cache

    def backward(self, params, cache, dy):
        """dy: (B, To, F) -> ({"W": (k, C, F), "b": (F,)}, dx: (B, T, C)).

        .. math::
            dW[i, c, f] = \\sum_{n, o} xp[n, o s + i d, c] \\, dy[n, o, f]
            db[f] = \\sum_{n, o} dy[n, o, f]
            dx[n, t, c] = \\sum_{o, i, f:\\; o s + i d = t + front} dy[n, o, f] \\, W[i, c, f]

        dW is a sum over every position o (and example n): the kernel is
        shared over time. dx is the transposed convolution (dy dilated by s,
        correlated with W flipped in time, channels swapped); steps no window
        reached (stride > span, VALID tails) get 0.
        """
        x4 = cache
        B, _, T, C = x4.shape
        if dy.ndim != 3 or dy.shape[0] != B or dy.shape[2] != self.features:
            raise ValueError(f"Conv1D: expected dy of shape ({B}, To, {self.features}) (the shape of y), "
                             f"got {tuple(dy.shape)}")
        grads, dx = self._conv2d(T).backward(self._params2d(params), x4, dy.reshape(B, 1, dy.shape[1], self.features))
        grads = {k: v.reshape(params[k].shape) for k, v in grads.items()}
        return grads, dx.reshape(B, T, C)

    def _params2d(self, params):
        """W (k, C, F) viewed as the Conv2D kernel (1, k, C, F); b unchanged."""
        out = {"W": params["W"][None]}
        if self.use_bias:
            out["b"] = params["b"]
        return out
