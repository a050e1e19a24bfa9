"""Hand-written custom_vjp rules as their authors write them, each with the bugs such rules carry.

The catalog of ``tests/test_check_vjp_matrix.py`` and ``scripts/check_vjp_matrix.py``: ``check_vjp`` with no
reference (finite differences of the kernel's own forward and the Taylor test) must PASS every kernel as written,
in float32 and float64 at every seed, and FAIL every planted bug with the first failing row on the input the bug
is in. The bugs are the four kinds a hand-written backward gets wrong: a sign, a forgotten term, a scale, and a
missing cotangent (an input's cotangent returned as zeros, or dy itself not multiplied in).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SIGN, TERM, SCALE, MISSING = "wrong sign", "forgotten term", "wrong scale", "missing cotangent"


class Kernel(NamedTuple):
    """``make(bug)``: the kernel with ``bug`` planted (None: as written); ``args(rng, dtype)``: a point to check at;
    ``bugs``: bug -> (its kind, the input whose row must fail first)."""

    name: str
    make: Callable
    args: Callable
    bugs: dict


def _custom(fun, fwd, bwd):
    f = jax.custom_vjp(fun)
    f.defvjp(fwd, bwd)
    return f


def layer_norm(bug=None):
    """y = xhat gamma + beta, xhat = (x - mean) r, r = 1/sqrt(var + eps); with g = dy gamma:
    dx = r (g - mean(g) - xhat mean(g xhat)), dgamma = sum_rows dy xhat, dbeta = sum_rows dy."""

    def layer_norm(x, gamma, beta):
        xc = x - x.mean(-1, keepdims=True)
        return xc / jnp.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5) * gamma[None] + beta[None]

    def fwd(x, gamma, beta):
        xc = x - x.mean(-1, keepdims=True)
        r = 1 / jnp.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5)
        return xc * r * gamma[None] + beta[None], (xc * r, r, gamma)

    def bwd(res, dy):
        xhat, r, gamma = res
        g = dy * gamma[None]
        mean_g = 0 if bug == "mean(g) left out" else g.mean(-1, keepdims=True)
        proj = xhat * (g * xhat).mean(-1, keepdims=True)
        dx = r * (g - mean_g + proj if bug == "projection's sign" else g - mean_g - proj)
        dgamma = (dy * xhat).sum(0)
        dbeta = jnp.zeros_like(gamma) if bug == "dbeta zero" else dy.sum(0)
        return dx, 0.5 * dgamma if bug == "dgamma halved" else dgamma, dbeta

    return _custom(layer_norm, fwd, bwd)


def rms_norm(bug=None):
    """y = x r gamma, r = 1/sqrt(mean(x^2) + eps); with g = dy gamma: dx = r (g - x r^2 mean(g x)),
    dgamma = sum_rows dy x r."""

    def rms_norm(x, gamma):
        return x / jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * gamma[None]

    def fwd(x, gamma):
        r = 1 / jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)
        return x * r * gamma[None], (x, r, gamma)

    def bwd(res, dy):
        x, r, gamma = res
        g = dy * gamma[None]
        dx = r * (g if bug == "r^2 term left out" else g - x * r**2 * (g * x).mean(-1, keepdims=True))
        dgamma = (dy * x * r).sum(0)
        return dx, -dgamma if bug == "dgamma's sign" else dgamma

    return _custom(rms_norm, fwd, bwd)


def softmax_cross_entropy(bug=None):
    """L_i = logsumexp(z_i) - <z_i, t_i> per row (t a probability vector, also differentiable):
    dz = dL (softmax(z) - t), dt = -dL z."""

    def softmax_cross_entropy(z, t):
        return jax.nn.logsumexp(z, axis=-1) - (z * t).sum(-1)

    def fwd(z, t):
        return softmax_cross_entropy(z, t), (jax.nn.softmax(z, axis=-1), z, t)

    def bwd(res, dl):
        p, z, t = res
        if bug == "dL not multiplied in":
            return p - t, -z
        dz = dl[:, None] * (p - t) * (1.001 if bug == "dz 0.1% large" else 1)
        return dz, (dl[:, None] * z if bug == "dt's sign" else -dl[:, None] * z)

    return _custom(softmax_cross_entropy, fwd, bwd)


def swish(bug=None):
    """y = x sigmoid(beta x), elementwise; with s = sigmoid(beta x): dx = dy (s + beta x s (1 - s)),
    dbeta = sum dy x^2 s (1 - s)."""

    def swish(x, beta):
        return x * jax.nn.sigmoid(beta * x)

    def fwd(x, beta):
        s = jax.nn.sigmoid(beta * x)
        return x * s, (x, beta, s)

    def bwd(res, dy):
        x, beta, s = res
        chain = 0 if bug == "chain term left out" else beta * x * s * (1 - s)
        return dy * (s + chain), jnp.sum(dy * x**2 * s * (1 - s)) * (2 if bug == "dbeta doubled" else 1)

    return _custom(swish, fwd, bwd)


def _attention_forward(q, k, v, block):
    """softmax(q k^T / sqrt(d)) v by key blocks with an online softmax; also the rows' log-sum-exp."""
    m = jnp.full(q.shape[:1], -jnp.inf, q.dtype)
    l = jnp.zeros(q.shape[:1], q.dtype)
    o = jnp.zeros(q.shape, q.dtype)
    for j in range(0, k.shape[0], block):
        s = q @ k[j:j + block].T / np.sqrt(q.shape[-1]).astype(q.dtype)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[:, None])
        corr = jnp.exp(m - m_new)
        l, o, m = l * corr + p.sum(-1), o * corr[:, None] + p @ v[j:j + block], m_new
    return o / l[:, None], m + jnp.log(l)


def chunked_attention(bug=None, block=2):
    """FlashAttention-2's backward (Dao, 2023, Algorithm 2): P recomputed from the log-sum-exp, D = rowsum(dO o O),
    dS = P o (dO V^T - D), dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d), dV = P^T dO."""

    def attention(q, k, v):
        return _attention_forward(q, k, v, block)[0]

    def fwd(q, k, v):
        o, lse = _attention_forward(q, k, v, block)
        return o, (q, k, v, o, lse)

    def bwd(res, do):
        q, k, v, o, lse = res
        scale = 1 / np.sqrt(q.shape[-1]).astype(q.dtype)
        d = (do * o).sum(-1)
        dq, dk, dv = jnp.zeros_like(q), [], []
        for j in range(0, k.shape[0], block):
            p = jnp.exp(q @ k[j:j + block].T * scale - lse[:, None])
            dv.append(p.T @ do)
            ds = p * (do @ v[j:j + block].T - (0 if bug == "D left out" else d[:, None]))
            dq = dq + ds @ k[j:j + block] * (1 if bug == "dq unscaled" else scale)
            dk.append(ds.T @ q * scale)
        dv = jnp.concatenate(dv)
        return dq, jnp.concatenate(dk), -dv if bug == "dv's sign" else dv

    return _custom(attention, fwd, bwd)


def _normal(rng, shape, dtype, scale=1.0, shift=0.0):
    return jax.device_put((shift + scale * rng.standard_normal(shape)).astype(dtype))


def _probabilities(rng, shape, dtype):
    e = np.exp(rng.standard_normal(shape))
    return jax.device_put((e / e.sum(-1, keepdims=True)).astype(dtype))


CATALOG = (
    Kernel("layer_norm", layer_norm,
           lambda rng, dt: (_normal(rng, (3, 6), dt), _normal(rng, (6,), dt, 0.2, 1.0), _normal(rng, (6,), dt, 0.1)),
           {"mean(g) left out": (TERM, "x"), "projection's sign": (SIGN, "x"), "dgamma halved": (SCALE, "gamma"),
            "dbeta zero": (MISSING, "beta")}),
    Kernel("rms_norm", rms_norm, lambda rng, dt: (_normal(rng, (3, 6), dt), _normal(rng, (6,), dt, 0.2, 1.0)),
           {"r^2 term left out": (TERM, "x"), "dgamma's sign": (SIGN, "gamma")}),
    Kernel("softmax_cross_entropy", softmax_cross_entropy,
           lambda rng, dt: (_normal(rng, (4, 5), dt, 2.0), _probabilities(rng, (4, 5), dt)),
           {"dt's sign": (SIGN, "t"), "dz 0.1% large": (SCALE, "z"), "dL not multiplied in": (MISSING, "z")}),
    Kernel("swish", swish, lambda rng, dt: (_normal(rng, (7,), dt, 2.0), _normal(rng, (), dt, 0.3, 1.0)),
           {"chain term left out": (TERM, "x"), "dbeta doubled": (SCALE, "beta")}),
    Kernel("attention", chunked_attention, lambda rng, dt: tuple(_normal(rng, (4, 3), dt) for _ in range(3)),
           {"D left out": (TERM, "q"), "dq unscaled": (SCALE, "q"), "dv's sign": (SIGN, "v")}),
)


@functools.cache
def kernel(name: str, bug: str | None):
    """One instance per (kernel, bug)."""
    return {k.name: k for k in CATALOG}[name].make(bug)
