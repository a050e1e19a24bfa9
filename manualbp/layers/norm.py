"""Normalization layers: LayerNorm (over the last axis) and BatchNorm (over every axis but the last).

Both compute, over a set S of N entries per feature,

    mu = mean_S(x),  var = mean_S((x - mu)^2),  rstd = (var + eps)^(-1/2),
    xhat = (x - mu) rstd,  y = gamma xhat + beta

and share one backward in the compact form. With dxhat = dy gamma and the
sums over S,

    dxhat_i/dx_j = rstd (delta_ij - 1/N) - (x_i - mu) rstd^3 (x_j - mu)/N
                 = (rstd/N) (N delta_ij - 1 - xhat_i xhat_j)

(the mean's own term in dvar/dx_j vanishes because sum_S (x - mu) = 0), so

    dx_j = sum_i dxhat_i dxhat_i/dx_j
         = (rstd/N) (N dxhat_j - sum_S dxhat - xhat_j sum_S dxhat xhat)

one expression, no chain of intermediate nodes. dgamma = sum(dy xhat) and
dbeta = sum(dy), summed over every axis but the last.

Computed as a projection, so that it does not cancel (``_backward``). Write
dx = rstd A dxhat with A g = g - mean(g) - xhat (xhat . g)/N. Since sum xhat = 0
and s2 = xhat . xhat = N var rstd^2 = N (1 - eps rstd^2),

    A g = P g + xhat (xhat . g) eps rstd^2 / s2,
    P g = g - mean(g) - xhat (xhat . g) / s2

where P is the orthogonal projection onto the complement of span{1, xhat}.
Where dxhat lies mostly in that span (N = 2, where the span is everything, or
dy close to a + b xhat) the compact form keeps only the rounding of terms of
dxhat's size, and the small true dx is lost (BatchNorm over a batch of 2,
float64: 3x jax.grad's error against a 50-digit truth; LayerNorm over 5
features: 3x at worst). P applied twice removes the rounding a first pass
leaves in the span (Gram-Schmidt's reorthogonalization: "twice is enough",
Parlett, The Symmetric Eigenvalue Problem, ch. 6), and the eps term, small
where it matters, is a product of accurate factors: measured in
docs/accuracy.md, manual's dx is then within 1.3x jax.grad's error everywhere
and far below it for the batch of 2.

Normalizing over N = 1 entry gives xhat = 0 whatever x is: the output no
longer depends on the input and its gradient is identically 0. Both layers
refuse it with a ValueError (LayerNorm over 1 feature; BatchNorm in training
mode over a batch of 1 with no other axes), as PyTorch's BatchNorm does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax import lax

from manualbp.layers.base import (
    Layer,
    check_array,
    check_dtype_match,
    check_dy,
    check_input_width,
    check_param,
    check_params,
    check_values,
)

_KEYS = ("gamma", "beta")


def _check_epsilon(layer):
    eps = layer.epsilon
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{layer.name}: epsilon must be a positive finite number, got {eps!r}")


def _init(layer, input_shape, dtype):
    if len(input_shape) < 1:
        raise ValueError(f"{layer.name}: expected an input shape of rank >= 1, got {tuple(input_shape)}")
    d = input_shape[-1]
    return {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}, tuple(input_shape)


def _check_input(layer, params, x, min_ndim):
    check_params(layer, params, _KEYS)
    check_array(layer, x, min_ndim=min_ndim)
    check_input_width(layer, params, "gamma", x, (None,))
    for key in _KEYS:
        check_param(layer, params, key, (x.shape[-1],), like=x, why="(x's last axis,)")


def _per_feature(v, ndim):
    """(D,) -> (1, ..., 1, D) so it meets an array of rank ``ndim`` without implicit rank promotion."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _normalize(params, x, axes, eps):
    """(y, xhat, rstd, mu, var) with the statistics over ``axes`` (kept as size-1 axes)."""
    mu = jnp.mean(x, axis=axes, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, axis=axes, keepdims=True)
    rstd = lax.rsqrt(var + jnp.asarray(eps, x.dtype))
    xhat = xc * rstd
    y = xhat * _per_feature(params["gamma"], x.ndim) + _per_feature(params["beta"], x.ndim)
    return y, xhat, rstd, mu, var


def _backward(params, xhat, rstd, dy, axes, eps):
    """(dparams, dx): dx = rstd (P P dxhat + xhat (xhat . dxhat) eps rstd^2 / s2), sums over ``axes`` (module docstring)."""
    d = xhat.shape[-1]
    dxhat = dy * _per_feature(params["gamma"], dy.ndim)
    grads = {
        "gamma": jnp.sum((dy * xhat).reshape(-1, d), axis=0),  # dgamma = sum dy xhat
        "beta": jnp.sum(dy.reshape(-1, d), axis=0),  # dbeta = sum dy
    }
    # recentered: the forward's x - mu carries mu's rounding as a common offset, large beside x - mu where the
    # entries nearly agree (var << eps); sum xhat = 0 is what the derivation assumes
    xhat = xhat - jnp.mean(xhat, axis=axes, keepdims=True)
    s2 = jnp.sum(xhat * xhat, axis=axes, keepdims=True)

    def project(g, g_xhat):  # P g = g - mean(g) - xhat (xhat . g) / s2, given xhat . g
        return g - jnp.mean(g, axis=axes, keepdims=True) - xhat * (g_xhat / s2)

    dxhat_xhat = jnp.sum(dxhat * xhat, axis=axes, keepdims=True)
    h = project(dxhat, dxhat_xhat)
    h = project(h, jnp.sum(h * xhat, axis=axes, keepdims=True))  # the second pass: no cancellation left in the span
    dx = rstd * (h + xhat * (dxhat_xhat * (jnp.asarray(eps, rstd.dtype) * rstd * rstd / s2)))
    return grads, dx


def _terms(params, x, dy, axes, eps) -> dict:
    """dx as the sum of its three named terms (the compact rule, term by term), recomputed from the input x."""
    _, xhat, rstd, _, _ = _normalize(params, x, axes, eps)
    n = math.prod(x.shape[a] for a in axes)
    dxhat = dy * _per_feature(params["gamma"], dy.ndim)
    terms = {
        "direct (rstd dxhat)": rstd * dxhat,
        "mean (-rstd/N sum dxhat: the path through mu)": -(rstd / n) * jnp.sum(dxhat, axis=axes, keepdims=True),
        "variance (-rstd/N xhat sum dxhat xhat: the path through var)":
            -(rstd / n) * xhat * jnp.sum(dxhat * xhat, axis=axes, keepdims=True),
    }
    return {name: jnp.broadcast_to(t, x.shape) for name, t in terms.items()}


@dataclass(frozen=True)
class LayerNorm(Layer):
    """y = gamma (x - mu) / sqrt(var + eps) + beta, mu and var over the last axis (per example, per step).

    Attributes:
      epsilon: added to the variance (> 0).

    Params: ``gamma`` (D,) (ones) and ``beta`` (D,) (zeros). Input (..., D)
    with D >= 2; output of the same shape.
    """

    epsilon: float = 1e-5

    def __post_init__(self):
        _check_epsilon(self)

    def init(self, key, input_shape, dtype=jnp.float32):
        del key
        params, shape = _init(self, input_shape, dtype)
        self._check_features(input_shape[-1])
        return params, shape

    def _check_features(self, d):
        if d < 2:
            raise ValueError(
                f"{self.name}: normalizing over a last axis of size {d} is undefined (xhat = 0 whatever x is, "
                "so the output would not depend on the input); LayerNorm needs >= 2 features"
            )

    def forward(self, params, x):
        """x: (..., D) -> y: (..., D); cache: (xhat (..., D), rstd (..., 1))."""
        _check_input(self, params, x, min_ndim=1)
        self._check_features(x.shape[-1])
        y, xhat, rstd, _, _ = _normalize(params, x, (x.ndim - 1,), self.epsilon)
        return y, (xhat, rstd)

    def backward(self, params, cache, dy):
        """Compact LayerNorm backward, N = D, sums over the last axis (module docstring):

        .. math::
            dx = (rstd/D) (D\\,dxhat - \\sum_j dxhat_j - xhat \\sum_j dxhat_j xhat_j),\\quad dxhat = dy\\,\\gamma
            \\quad \\text{(computed as a projection applied twice: module docstring)}
            d\\gamma = \\sum_{n} dy_n xhat_n,\\quad d\\beta = \\sum_n dy_n  \\quad (n over every leading axis)

        dy: (..., D); returns ({"gamma": (D,), "beta": (D,)}, dx (..., D)).
        """
        xhat, rstd = cache
        check_dy(self, dy, xhat.shape, xhat.dtype)
        return _backward(params, xhat, rstd, dy, (dy.ndim - 1,), self.epsilon)

    def backward_terms(self, params, x, dy) -> dict:
        """dx of ``backward`` as {name: term} (they sum to dx), from the input x: what a diagnosis fits against."""
        return _terms(params, x, dy, (x.ndim - 1,), self.epsilon)


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Training mode: y = gamma (x - mu_B) / sqrt(var_B + eps) + beta, statistics over every axis but the last.

    For (B, D) the statistics run over the batch; for (B, T, D) or NHWC
    images over batch and time/space, one mean and variance per feature
    (channel), N = B T (or B H W) entries each.

    Attributes:
      epsilon: added to the variance (> 0).
      momentum: running statistics decay, in [0, 1).

    Params: ``gamma`` (C,) (ones) and ``beta`` (C,) (zeros).

    Running statistics live OUTSIDE the params, so no gradient ever touches
    them: a separate dict ``stats = {"mean": (C,), "var": (C,)}`` from
    ``init_stats``, advanced by the pure function ``update_stats(stats,
    cache)`` from a training forward's cache (exponential moving average of
    the batch mean and the biased batch variance, as flax), and used by
    ``forward_eval(params, stats, x)`` for evaluation, where a batch of 1 is
    fine. Training mode with N = 1 raises a ValueError: the batch variance
    is 0 and the output would not depend on the input.

    For every BatchNorm inside a model at once (stats keyed by layer path):
    ``init_running_stats(model, params)``, ``update_running_stats(model,
    params, stats, x)`` and ``forward_eval(model, params, stats, x)`` of
    ``manualbp.training.running_stats``.
    """

    epsilon: float = 1e-5
    momentum: float = 0.9

    def __post_init__(self):
        _check_epsilon(self)
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
            raise ValueError(f"{self.name}: momentum must lie in [0, 1), got {m!r}")

    def init(self, key, input_shape, dtype=jnp.float32):
        del key
        return _init(self, input_shape, dtype)

    def init_stats(self, input_shape, dtype=jnp.float32):
        """Running statistics {"mean": zeros (C,), "var": ones (C,)} for an input shape (..., C)."""
        c = tuple(input_shape)[-1]
        return {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def forward(self, params, x):
        """Training mode. x: (B, ..., C) -> y of x's shape; cache: (xhat, rstd (1, ..., 1, C), mean (C,), var (C,))."""
        _check_input(self, params, x, min_ndim=2)
        n = math.prod(x.shape[:-1])
        if n < 2:
            raise ValueError(
                f"{self.name}: training-mode statistics over N = {n} value per channel (x of shape "
                f"{tuple(x.shape)}) are undefined: the variance is 0 and the output would not depend on x; "
                "use a batch of >= 2, or forward_eval with running statistics"
            )
        axes = tuple(range(x.ndim - 1))
        y, xhat, rstd, mu, var = _normalize(params, x, axes, self.epsilon)
        c = x.shape[-1]
        return y, (xhat, rstd, mu.reshape(c), var.reshape(c))

    def backward(self, params, cache, dy):
        """Compact BatchNorm backward, N = prod(dy.shape[:-1]), sums over every axis but the last:

        .. math::
            dx = (rstd/N) (N\\,dxhat - \\sum_n dxhat_n - xhat \\sum_n dxhat_n xhat_n),\\quad dxhat = dy\\,\\gamma
            \\quad \\text{(computed as a projection applied twice: module docstring)}
            d\\gamma = \\sum_n dy_n xhat_n,\\quad d\\beta = \\sum_n dy_n

        dy: (B, ..., C); returns ({"gamma": (C,), "beta": (C,)}, dx of dy's shape).
        The running statistics are not inputs of the loss: they get no gradient.
        """
        xhat, rstd, _, _ = cache
        check_dy(self, dy, xhat.shape, xhat.dtype)
        return _backward(params, xhat, rstd, dy, tuple(range(dy.ndim - 1)), self.epsilon)

    def backward_terms(self, params, x, dy) -> dict:
        """dx of ``backward`` as {name: term} (they sum to dx), from the input x: what a diagnosis fits against."""
        return _terms(params, x, dy, tuple(range(x.ndim - 1)), self.epsilon)

    def update_stats(self, stats, cache):
        """Pure EMA step from a training forward's cache: s <- momentum s + (1 - momentum) s_batch.

        stats: {"mean": (C,), "var": (C,)}; the batch variance is the biased one (divided by N).
        """
        _, _, mu, var = cache
        self._check_stats(stats, mu.shape[0])
        m = self.momentum
        return {"mean": m * stats["mean"] + (1 - m) * mu, "var": m * stats["var"] + (1 - m) * var}

    def _check_stats(self, stats, c):
        if not isinstance(stats, dict) or set(stats) != {"mean", "var"}:
            got = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
            raise ValueError(f"{self.name}: expected stats as a dict with keys ['mean', 'var'], got {got}")
        for k in ("mean", "var"):
            check_array(self, stats[k], what=f"stats[{k!r}]")
            if tuple(stats[k].shape) != (c,):
                raise ValueError(f"{self.name}: expected stats[{k!r}] of shape ({c},), got {tuple(stats[k].shape)}")

    def forward_eval(self, params, stats, x):
        """Evaluation mode: y = gamma (x - mean) / sqrt(var + eps) + beta with the running ``stats``.

        x: (B, ..., C) with any B >= 1 -> y of x's shape. Not differentiated (no cache).
        """
        _check_input(self, params, x, min_ndim=2)
        self._check_stats(stats, params["gamma"].shape[0])
        for k in ("mean", "var"):
            check_dtype_match(self, x, stats[k], wname=f"stats[{k!r}]")
        # a variance below 0 (or NaN/Inf statistics) has no square root: an error where the values are concrete; under
        # jit its rows come out NaN, never a plausible number
        check_values(self.name, "running statistics must be finite, the variance >= 0", stats["var"],
                     lambda v: ~((v >= 0) & (abs(v) < np.inf)))
        check_values(self.name, "running statistics must be finite", stats["mean"], lambda v: ~(abs(v) < np.inf))
        rstd = lax.rsqrt(stats["var"] + jnp.asarray(self.epsilon, x.dtype))
        xhat = (x - _per_feature(stats["mean"], x.ndim)) * _per_feature(rstd, x.ndim)
        return xhat * _per_feature(params["gamma"], x.ndim) + _per_feature(params["beta"], x.ndim)
