"""Elementwise activations, each with its hand-written derivative.

Every class states f and f' and the convention at non-differentiable
points, chosen to match ``jax.nn`` (and so ``jax.grad`` of the reference).
Backward is always dx = dy * f'(.) (the Hadamard product of BP1/BP2); what
is cached is what f' is cheapest to compute from: the output y for sigmoid
and tanh (f' = y(1-y), (1-y)(1+y)), the input x otherwise (for a large ReLU
input, the mask [x > 0] packed 8 to a byte instead).

Saturated units have tiny derivatives, and each is computed in a form that
keeps its relative precision (a test checks every one against a high-precision
truth at extreme inputs): tanh' = (1 - y)(1 + y), not 1 - y^2, whose y^2 rounds
away the difference from 1 (at x = 10 in float64 it is off by ~1e-9 relative);
sigmoid(x) = 1/(1 + e^-x), not (tanh(x/2) + 1)/2, which loses everything below
~1e-8 (float32) for x << 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax

from manualbp.layers.arguments import check_callable, check_flag, check_number
from manualbp.layers.base import Layer, check_array, check_dy, check_no_params, describe


def sigmoid(x):
    """1 / (1 + e^-x), to full relative precision at both ends (e^-x = inf for x << 0 gives the limit 0)."""
    return 1 / (1 + jnp.exp(-x))


def sigmoid_pair(x):
    """(sigmoid(x), sigmoid(-x)) from one e^-|x|, each to full relative precision (1 - sigmoid(x) would cancel)."""
    e = jnp.exp(-jnp.abs(x))
    r = 1 / (1 + e)
    big = x >= 0
    return jnp.where(big, r, e * r), jnp.where(big, e * r, r)


class Activation(Layer):
    def forward(self, params, x):
        check_no_params(self, params)
        check_array(self, x)
        return self._forward(x)


@dataclass(frozen=True)
class Identity(Activation):
    """f(x) = x, f'(x) = 1: the linear activation, which removes the (.) f' term of BP2."""

    def _forward(self, x):
        return x, x  # the cache is y itself (only its shape and dtype are read: nothing is kept under jit)

    def backward(self, params, cache, dy):
        """dx = dy."""
        check_dy(self, dy, cache.shape, cache.dtype)
        return {}, dy


@dataclass(frozen=True)
class Sigmoid(Activation):
    """f(x) = 1 / (1 + e^-x), f'(x) = f(x)(1 - f(x)) <= 1/4 (why deep sigmoid nets vanish)."""

    def _forward(self, x):
        y = sigmoid(x)
        return y, y

    def backward(self, params, cache, dy):
        """dx = dy * y (1 - y), from the cached output y (as jax.grad: 1 - y is exact once y > 1/2)."""
        y = cache
        check_dy(self, dy, y.shape, y.dtype)
        return {}, dy * y * (1 - y)


@dataclass(frozen=True)
class Tanh(Activation):
    """f(x) = tanh(x), f'(x) = 1 - tanh(x)^2 = (1 - y)(1 + y)."""

    def _forward(self, x):
        y = jnp.tanh(x)
        return y, y

    def backward(self, params, cache, dy):
        """dx = dy * (1 - y)(1 + y), from the cached output y.

        Not 1 - y^2: near saturation y^2 rounds to within an ulp of 1 and the
        subtraction keeps only that rounding; 1 - y is exact there (Sterbenz).
        """
        y = cache
        check_dy(self, dy, y.shape, y.dtype)
        return {}, dy * (1 - y) * (1 + y)


@dataclass(frozen=True)
class ReLU(Activation):
    """f(x) = max(x, 0), f'(x) = 1 if x > 0 else 0; f'(0) = 0 as ``jax.nn.relu``.

    (jax.grad of ``jnp.maximum(x, 0)`` gives 0.5 at 0; that of ``jax.nn.relu`` gives 0.)
    """

    def _forward(self, x):
        return jnp.maximum(x, 0), positive_mask(x)

    def backward(self, params, cache, dy):
        """dx = dy * [x > 0]."""
        check_dy(self, dy, *mask_spec(cache))
        return {}, jnp.where(is_positive(cache), dy, 0)

    def kink_pattern(self, cache):
        return is_positive(cache)


# The mask [x > 0] as ReLU's cache. A large ReLU keeps it packed 8 to a byte (a reduction, so XLA materialises it in
# the forward and x need not stay alive until backward: 1/32 of float32 x's memory); a small one (e.g. one step of an
# RNN) keeps x itself, with no packing work.
_PACK_MIN_SIZE = 1 << 20


def positive_mask(x):
    """ReLU's cache for [x > 0]: the mask packed 8 to a byte (uint8) when x is large, else x itself."""
    return _pack_mask(x > 0) if _packs(x) else x


def is_positive(cache):
    """[x > 0] (bool, x's shape) from ``positive_mask``'s cache."""
    return _unpack_mask(cache) if cache.dtype == jnp.uint8 else cache > 0


def mask_spec(cache):
    """(x's shape, x's dtype or None when packed) from ``positive_mask``'s cache."""
    if cache.dtype == jnp.uint8:
        return (*cache.shape[:-1], cache.shape[-1] * 8), None
    return cache.shape, cache.dtype


def _packs(x):
    return x.ndim >= 1 and x.shape[-1] % 8 == 0 and x.size >= _PACK_MIN_SIZE


def _bit_weights(ndim):
    return (jnp.uint8(1) << jnp.arange(8, dtype=jnp.uint8)).reshape((1,) * ndim + (8,))


def _pack_mask(mask):
    """(..., C) bool -> (..., C / 8) uint8, bit k of byte g = mask[..., 8 g + k]."""
    m = mask.reshape(*mask.shape[:-1], mask.shape[-1] // 8, 8).astype(jnp.uint8)
    return jnp.sum(m * _bit_weights(mask.ndim), axis=-1, dtype=jnp.uint8)


def _unpack_mask(bits):
    """Inverse of ``_pack_mask``: (..., C / 8) uint8 -> (..., C) bool."""
    m = (bits[..., None] & _bit_weights(bits.ndim)) != 0
    return m.reshape(*bits.shape[:-1], bits.shape[-1] * 8)


@dataclass(frozen=True)
class LeakyReLU(Activation):
    """f(x) = x if x >= 0 else s x, f'(x) = 1 if x >= 0 else s; f'(0) = 1 as ``jax.nn.leaky_relu``."""

    negative_slope: float = 0.01

    def __post_init__(self):
        check_number("LeakyReLU", "negative_slope", self.negative_slope)

    def _forward(self, x):
        return jnp.where(x >= 0, x, self.negative_slope * x), x

    def backward(self, params, cache, dy):
        """dx = dy * (1 if x >= 0 else negative_slope)."""
        x = cache
        check_dy(self, dy, x.shape, x.dtype)
        return {}, jnp.where(x >= 0, dy, self.negative_slope * dy)

    def kink_pattern(self, cache):
        return cache >= 0


@dataclass(frozen=True)
class Softplus(Activation):
    """f(x) = log(1 + e^x), f'(x) = sigmoid(x)."""

    def _forward(self, x):
        y = jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))  # stable for large |x|
        return y, x

    def backward(self, params, cache, dy):
        """dx = dy * sigmoid(x), sigmoid(x) = 1/(1 + e^-x) (full relative precision for x << 0)."""
        x = cache
        check_dy(self, dy, x.shape, x.dtype)
        return {}, dy * sigmoid(x)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


@dataclass(frozen=True)
class GELU(Activation):
    """Gaussian error linear unit, as ``jax.nn.gelu``.

    approximate=True:  f(x) = x/2 (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3),
                       f'(x) = (1 + t)/2 + x/2 (1 - t)(1 + t) u'
                             = (1 + t)/2 (1 + x (1 - t) u'),  u' = sqrt(2/pi) (1 + 3 0.044715 x^2)
    approximate=False: f(x) = x Phi(x), f'(x) = Phi(x) + x phi(x),
                       Phi(x) = erfc(-x/sqrt 2)/2, phi(x) = e^(-x^2/2)/sqrt(2 pi)

    Phi is erfc(-x/sqrt 2)/2, not (1 + erf(x/sqrt 2))/2, which cancels to 0
    for x << 0 (as ``jax.nn.gelu``); (1 - t)(1 + t), not 1 - t^2 (see Tanh).
    """

    approximate: bool = True

    def __post_init__(self):
        check_flag("GELU", "approximate", self.approximate)

    def _forward(self, x):
        if self.approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
            return 0.5 * x * (1 + t), (x, t)
        cdf = 0.5 * lax.erfc(-x / math.sqrt(2))
        return x * cdf, (x, cdf)

    def backward(self, params, cache, dy):
        """dx = dy * f'(x), f' as in the class docstring (cache: x and t = tanh(u), or x and Phi(x))."""
        x, s = cache
        check_dy(self, dy, x.shape, x.dtype)
        if self.approximate:
            du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * x * x)
            return {}, dy * (0.5 * (1 + s) * (1 + x * (1 - s) * du))
        pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return {}, dy * (s + x * pdf)


def _elementwise(layer, what, f, x):
    """f(x), refused unless of x's shape and dtype: an elementwise function (one value per entry, nothing broadcast
    or promoted)."""
    v = f(x)
    if not (hasattr(v, "shape") and hasattr(v, "dtype") and tuple(v.shape) == tuple(x.shape) and v.dtype == x.dtype):
        raise ValueError(f"{layer.name}: {what}(x) must return an array of x's shape and dtype "
                         f"{describe(x)} (one value per entry), got {describe(v)}")
    return v


@dataclass(frozen=True)
class Elementwise(Activation):
    """A user's own activation: ``fn`` and its hand-written ``derivative``, both of x.

    Backward is dx = dy * derivative(x). The reference differentiates ``fn``
    with jax.grad, so ``check_layer``/``compare`` prove the derivative.

    Example::

        swish = Elementwise(lambda x: x * jax.nn.sigmoid(x),
                            lambda x: jax.nn.sigmoid(x) * (1 + x * (1 - jax.nn.sigmoid(x))),
                            label="swish")
    """

    fn: Callable
    derivative: Callable
    label: str = "Elementwise"

    kink_pattern = None  # fn is the user's: whether it makes discrete choices (an abs, a max) is not declared

    @property
    def name(self):
        return self.label

    def __post_init__(self):
        check_callable("Elementwise", "fn", self.fn, "of x")
        check_callable("Elementwise", "derivative", self.derivative, "of x")
        if not isinstance(self.label, str):
            raise TypeError(f"Elementwise: label must be a str, got {type(self.label).__name__}")

    def _forward(self, x):
        return _elementwise(self, "fn", self.fn, x), x

    def backward(self, params, cache, dy):
        """dx = dy * derivative(x); derivative(x) must be of x's shape and a floating dtype (nothing is broadcast)."""
        x = cache
        check_dy(self, dy, x.shape, x.dtype)
        return {}, dy * _elementwise(self, "derivative", self.derivative, x)
