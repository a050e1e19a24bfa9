"""MaxPool2D and AvgPool2D over NHWC images, with hand-written backward passes.

Both see an image through the same windows: ``window`` (kh, kw), ``stride``
(default: the window, i.e. non-overlapping) and ``padding`` "VALID" or
"SAME" (out = ceil(in / s), smaller half on top/left). Two formulations:

- stride == window (non-overlapping): pad/crop to Ho kh x Wo kw and reshape
  to (N, Ho, kh, Wo, kw, C); each window is two axes, its backward one
  broadcast compare against the winner index cached by forward (the fastest
  measured on XLA CPU);
- otherwise: one strided slice per window offset (i, j); the backward pads
  each offset's gradient back to where that slice came from and sums, so an
  element shared by several windows receives the sum of their gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax

from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, spec
from manualbp.layers.window import check_padding, output_size, pair, resolve_padding


class _Pool2D(Layer):
    def __post_init__(self):
        pair(self.name, "window", self.window)
        if self.stride is not None:
            pair(self.name, "stride", self.stride)
        check_padding(self.name, self.padding, explicit=False)

    def _geometry(self, size):
        """(window, stride, pads, out_size) for a spatial input size (H, W)."""
        window = pair(self.name, "window", self.window)
        stride = window if self.stride is None else pair(self.name, "stride", self.stride)
        pads = resolve_padding(self.padding, size, window, stride)
        return window, stride, pads, output_size(self.name, size, window, stride, pads)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected an input shape (H, W, C), got {tuple(input_shape)}")
        return (*self._geometry(tuple(input_shape[:2]))[3], input_shape[2])

    def _windows(self, x, fill):
        """x (N, H, W, C) -> (N, Ho, kh, Wo, kw, C) for stride == window, or the kh kw offset slices."""
        window, stride, pads, out = self._geometry(x.shape[1:3])
        fill = jnp.array(fill, x.dtype)
        if window == stride:
            # pad (with ``fill``) or crop the bottom/right so the windows tile exactly
            cfg = [(lo, o * k - n - lo, 0) for n, k, (lo, _), o in zip(x.shape[1:3], window, pads, out, strict=True)]
            n, c = x.shape[0], x.shape[3]
            return lax.pad(x, fill, [(0, 0, 0), *cfg, (0, 0, 0)]).reshape(n, out[0], window[0], out[1], window[1], c)
        xp = lax.pad(x, fill, [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
        return [
            lax.slice(xp, (0, i, j, 0), (x.shape[0], i + (out[0] - 1) * stride[0] + 1,
                                          j + (out[1] - 1) * stride[1] + 1, x.shape[3]), (1, *stride, 1))
            for i in range(window[0])
            for j in range(window[1])
        ]

    def _unwindow(self, parts, shape):
        """Adjoint of ``_windows`` (with zero fill): the gradient of each window element back on x (N, H, W, C)."""
        window, stride, pads, out = self._geometry(shape[1:3])
        zero = jnp.zeros((), parts[0].dtype if isinstance(parts, list) else parts.dtype)
        if window == stride:
            dxw = parts.reshape(shape[0], out[0] * window[0], out[1] * window[1], shape[3])
            cfg = [(-lo, n + lo - o * k, 0) for n, k, (lo, _), o in zip(shape[1:3], window, pads, out, strict=True)]
            return lax.pad(dxw, zero, [(0, 0, 0), *cfg, (0, 0, 0)])
        dx = None
        for idx, part in enumerate(parts):
            i, j = divmod(idx, window[1])
            # slice (i, j) took rows i, i + s, ..., of the padded image: put part back there
            cfg = [(i - pads[0][0], shape[1] + pads[0][0] - i - (out[0] - 1) * stride[0] - 1, stride[0] - 1),
                   (j - pads[1][0], shape[2] + pads[1][0] - j - (out[1] - 1) * stride[1] - 1, stride[1] - 1)]
            term = lax.pad(part, zero, [(0, 0, 0), *cfg, (0, 0, 0)])
            dx = term if dx is None else dx + term
        return dx


@dataclass(frozen=True)
class MaxPool2D(_Pool2D):
    """y[n, o, p, c] = max_{i, j} xp[n, o s_h + i, p s_w + j, c], xp padded with -inf.

    Attributes:
      window: (kh, kw), or an int.
      stride: (s_h, s_w), an int, or None for the window (non-overlapping).
      padding: "VALID" or "SAME".

    Shapes: x (N, H, W, C) -> y (N, Ho, Wo, C). No params. The winner of a
    window is its FIRST maximum in row-major window order (i, then j),
    the element ``jax.grad`` of ``lax.reduce_window`` max routes to.
    """

    window: int | tuple[int, int] = 2
    stride: int | tuple[int, int] | None = None
    padding: str = "VALID"

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, Ho, Wo, C); cache: (winner, x's shape and dtype).

        winner[n, o, p, c] = i* kw + j*, the row-major index of the window's
        first maximum (int8 when kh kw <= 127): all that backward needs, a
        quarter of y's bytes for 2x2 windows, found in the same pass as y.
        """
        check_no_params(self, params)
        check_array(self, x, ndim=4)
        y, winner = self._max_and_winner(x)
        return y, (winner, spec(x))

    def _offsets(self, x):
        """The kh kw window offsets k = i kw + j in row-major order, each an (N, Ho, Wo, C) view of x padded with -inf."""
        win = self._windows(x, -jnp.inf)
        if isinstance(win, list):
            return win
        return [win[:, :, i, :, j] for i in range(win.shape[2]) for j in range(win.shape[4])]

    def _max_and_winner(self, x):
        """y = the max over the offsets; winner = the first offset k holding it (ties go to the lowest k).

        One variadic reduction over the stacked offsets (N, Ho, Wo, C, kh kw)
        of (value, k) pairs, the pair with the larger value (NaN counting as
        the largest, so y propagates NaN) or, between equal values, the lower k
        winning. Being a reduction, XLA materialises winner in the forward
        instead of re-deriving it in the backward from x, which then need not
        stay alive until backward.
        """
        stacked = jnp.stack(self._offsets(x), axis=-1)
        kdtype = jnp.int8 if stacked.shape[-1] <= 127 else jnp.int32
        ks = lax.broadcasted_iota(kdtype, stacked.shape, stacked.ndim - 1)

        def pick(a, b):
            (av, ak), (bv, bk) = a, b
            take_a = (av > bv) | (av != av) | ((av == bv) & (ak < bk))
            return lax.select(take_a, av, bv), lax.select(take_a, ak, bk)

        init = (jnp.array(-jnp.inf, x.dtype), jnp.array(stacked.shape[-1], kdtype))
        y, winner = lax.reduce((stacked, ks), init, pick, (stacked.ndim - 1,))
        return y, winner

    def backward(self, params, cache, dy):
        """All of dy[n, o, p, c] goes to its window's winner; an element winning several windows gets the sum.

        .. math::
            dx[n, h, w, c] = \\sum_{o, p:\\; (h + top, w + left) = (o s_h + i^*, p s_w + j^*)} dy[n, o, p, c]

        where (i*, j*) is the first maximum of window (o, p) in row-major
        order (ties: only the first tied element gets the gradient, as
        ``jax.grad`` of ``lax.reduce_window`` max; ``jax.grad`` of ``jnp.max``
        would split it), cached by forward as winner = i* kw + j*. Written
        with comparisons, pads and reshapes only, so it never lowers to
        ``select_and_scatter_add``.
        """
        winner, x = cache
        check_dy(self, dy, winner.shape, x.dtype)  # y (N, Ho, Wo, C): one winner per output
        shape = x.shape
        window, stride, _, _ = self._geometry(shape[1:3])
        zero = jnp.zeros((), dy.dtype)
        kh, kw = window
        if window == stride:
            # one broadcast compare: window element (i, j) of (N, Ho, kh, Wo, kw, C) gets dy where winner == i kw + j
            k = (jnp.arange(kh, dtype=winner.dtype).reshape(1, 1, kh, 1, 1, 1) * kw
                 + jnp.arange(kw, dtype=winner.dtype).reshape(1, 1, 1, 1, kw, 1))
            hit = winner[:, :, None, :, None, :] == k
            parts = jnp.where(hit, dy[:, :, None, :, None, :], zero)
        else:
            parts = [jnp.where(winner == k, dy, zero) for k in range(kh * kw)]
        return {}, self._unwindow(parts, shape)

    def kink_pattern(self, cache):
        """The winner's row-major index i kw + j within its window, for every output: (N, Ho, Wo, C) int32."""
        return cache[0].astype(jnp.int32)


@dataclass(frozen=True)
class AvgPool2D(_Pool2D):
    """y[n, o, p, c] = (1 / (kh kw)) sum_{i, j} xp[n, o s_h + i, p s_w + j, c], xp zero-padded.

    With padding="SAME" the padded zeros COUNT: every window divides by
    kh kw (flax's ``avg_pool`` default, count_include_pad=True), so border
    outputs are pulled toward 0.

    Attributes:
      window: (kh, kw), or an int.
      stride: (s_h, s_w), an int, or None for the window (non-overlapping).
      padding: "VALID" or "SAME".

    Shapes: x (N, H, W, C) -> y (N, Ho, Wo, C). No params.
    """

    window: int | tuple[int, int] = 2
    stride: int | tuple[int, int] | None = None
    padding: str = "VALID"

    def forward(self, params, x):
        """x: (N, H, W, C) -> y: (N, Ho, Wo, C); cache: x's shape and dtype (backward needs nothing else)."""
        check_no_params(self, params)
        check_array(self, x, ndim=4)
        kh, kw = pair(self.name, "window", self.window)
        win = self._windows(x, 0)
        total = jnp.sum(win, axis=(2, 4)) if not isinstance(win, list) else sum(win[1:], win[0])
        return total / jnp.array(kh * kw, x.dtype), spec(x)

    def backward(self, params, cache, dy):
        """Each window spreads dy / (kh kw) over its elements; overlaps add.

        .. math::
            dx[n, h, w, c] = \\frac{1}{k_h k_w}
                             \\sum_{o, p:\\; (h + top, w + left) \\in \\text{window}(o, p)} dy[n, o, p, c]
        """
        x = cache
        shape = x.shape
        window, stride, _, out = self._geometry(shape[1:3])
        check_dy(self, dy, (shape[0], *out, shape[3]), x.dtype)
        g = dy / jnp.array(window[0] * window[1], dy.dtype)
        if window == stride:
            parts = jnp.broadcast_to(g[:, :, None, :, None, :], (g.shape[0], g.shape[1], window[0], g.shape[2],
                                                                  window[1], g.shape[3]))
        else:
            parts = [g] * (window[0] * window[1])
        return {}, self._unwindow(parts, shape)
