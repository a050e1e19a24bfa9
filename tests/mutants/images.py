"""Image mutants: conv.py, conv1d.py, conv_transpose.py, pool.py, global_pool.py.

Each class is the real layer with ONE line of its backward wrong (the comment on that line says what the
right line is); see ``mutants.layers`` for the conventions.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

import manualbp as mbp
from mutants.base import SeesIO, mutant_of

# ---- conv.py -------------------------------------------------------------------------------------------------


@mutant_of(mbp.Conv2D)
class ConvKernelNotFlipped(mbp.Conv2D):
    """dx's transposed convolution with the kernel NOT flipped in space (passing it pre-flipped undoes the flip)."""

    @staticmethod
    def _dx(dy, W, *geometry):
        return mbp.Conv2D._dx(dy, W[::-1, ::-1], *geometry)  # right: W


@mutant_of(mbp.Conv2D)
class ConvPadSidesSwapped(mbp.Conv2D):
    """dx placed with the bottom/right padding where the top/left belongs (equal only for symmetric padding)."""

    @staticmethod
    def _dx(dy, W, size, kernel, stride, dilation, pads, out):
        swapped = tuple((hi, lo) for lo, hi in pads)  # right: pads
        return mbp.Conv2D._dx(dy, W, size, kernel, stride, dilation, swapped, out)


@mutant_of(mbp.Conv2D)
class ConvDWDilationIgnored(mbp.Conv2D):
    """dW gathered from undilated patches: the kernel's taps at i instead of i d."""

    @staticmethod
    def _dW(x, dy, kernel, stride, dilation, *geometry):
        return mbp.Conv2D._dW(x, dy, kernel, stride, (1, 1), *geometry)  # right: dilation


@mutant_of(mbp.Conv2D)
class ConvDbMeanOverPositions(mbp.Conv2D):
    """db averaged over the output positions instead of summed (a shared weight's gradient sums its uses)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        grads["b"] = jnp.sum(jnp.mean(dy, axis=(1, 2)), axis=0)  # right: jnp.sum(dy, axis=(0, 1, 2))
        return grads, dx


# ---- pool.py (non-overlapping VALID windows of size k, H and W multiples of k) --------------------------------


def _window_hits(layer, x, y):
    """(N, Ho, k, Wo, k, C) windows of x, True where an element equals its window's max."""
    n, h, w, c = x.shape
    k = layer.window
    return x.reshape(n, h // k, k, w // k, k, c) == y[:, :, None, :, None, :]


@mutant_of(mbp.MaxPool2D)
class MaxPoolTiesSplit(SeesIO, mbp.MaxPool2D):
    """A tied window's gradient split among its maxima (jax.grad of jnp.max) instead of all to the first."""

    def backward(self, params, cache, dy):
        _, x, y = cache
        hit = _window_hits(self, x, y)
        share = dy / jnp.sum(hit, axis=(2, 4))  # right: all of dy to the first maximum
        return {}, jnp.where(hit, share[:, :, None, :, None, :], 0).reshape(x.shape)


@mutant_of(mbp.MaxPool2D)
class MaxPoolTiesDuplicated(SeesIO, mbp.MaxPool2D):
    """dx = dy * [x == max]: a naive equality mask gives EVERY tied maximum the whole gradient."""

    def backward(self, params, cache, dy):
        _, x, y = cache
        return {}, jnp.where(_window_hits(self, x, y), dy[:, :, None, :, None, :], 0).reshape(x.shape)


@mutant_of(mbp.AvgPool2D)
class AvgPoolNoDivide(mbp.AvgPool2D):
    """Each window spreads dy, not dy / (kh kw), over its elements."""

    def backward(self, params, cache, dy):
        return super().backward(params, cache, dy * (self.window * self.window))  # right: dy


@mutant_of(mbp.AvgPool2D)
class AvgPoolCountExcludesPad(SeesIO, mbp.AvgPool2D):
    """Backward divides by the window's count of REAL elements (count_include_pad=False) while forward counts kh kw."""

    def backward(self, params, cache, dy):
        k = self.window
        counts = lax.reduce_window(jnp.ones_like(cache[1]), 0.0, lax.add, (1, k, k, 1), (1, k, k, 1), self.padding)
        return super().backward(params, cache[0], dy * (k * k) / counts)  # right: dy


# ---- conv1d.py (Conv2D's backward helpers with one spatial axis) ----------------------------------------------


@mutant_of(mbp.Conv1D)
class Conv1DdWDilationIgnored(mbp.Conv1D):
    """dW gathered from undilated taps (x[o s + i] where x[o s + i d] belongs); dx and db right."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        kernel, stride, dilation, pads, out = self._geometry(cache.shape[1])
        return {**grads, "W": mbp.Conv2D._dW(cache, dy, kernel, stride, (1,), pads, out)}, dx  # right: dilation


# ---- conv_transpose.py -----------------------------------------------------------------------------------------


@mutant_of(mbp.ConvTranspose2D)
class ConvTransposeKernelNotFlipped(mbp.ConvTranspose2D):
    """dx, a strided correlation of dy, with W NOT flipped in space (passing it pre-flipped undoes the flip)."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        _, dx = super().backward({**params, "W": params["W"][::-1, ::-1]}, cache, dy)  # right: params
        return grads, dx


# ---- global_pool.py --------------------------------------------------------------------------------------------


@mutant_of(mbp.GlobalMaxPool2D)
class GlobalMaxPoolTiesSplit(SeesIO, mbp.GlobalMaxPool2D):
    """A channel's dy split among its tied maxima (jax.grad of jnp.max) instead of all to the first."""

    def backward(self, params, cache, dy):
        _, x, y = cache
        hit = x == y[:, None, None, :]
        return {}, jnp.where(hit, (dy / jnp.sum(hit, axis=(1, 2)))[:, None, None, :], 0)  # right: first max only


@mutant_of(mbp.GlobalAvgPool2D)
class GlobalAvgPoolNoDivide(SeesIO, mbp.GlobalAvgPool2D):
    """Every pixel gets the channel's whole dy, not dy / (H W)."""

    def backward(self, params, cache, dy):
        _, dx = super().backward(params, cache[0], dy)
        return {}, dx * (cache[1].shape[1] * cache[1].shape[2])  # right: dx
