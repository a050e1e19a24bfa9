"""jax.grad's own rounding error, measured: a float64 truth, and samples of the error at nearby points.

A verdict that accounts for rounding needs to know how far jax.grad's value is from the exact one
on each quantity. ``measure`` gets that from the reference alone, at the compared point:

* below float64 (bfloat16, float16, float32): the **truth** is the reference evaluated in float64
  at the same point (inputs and parameters upcast, which is exact); jax.grad's error is
  r - truth. Further samples of that error come from ``samples`` nearby points: every float input
  and parameter moved by one rounding step (v (1 +/- eps), a random sign per entry), the reference
  evaluated there in the compared dtype and in float64.
* float64 has no higher precision on the host, so the error is estimated from float32: at the
  point rounded to float32 (and at ``samples`` moved points), the float32 reference minus the float64
  reference at the same float32 point, scaled by eps(float64) / eps(float32) = 2^-29. Rounding
  errors are first order in the unit roundoff, so the scaled float32 error measures the float64
  one, cancellation included. A discrete change in float32 (a ReLU or max-pool winner flipped by
  rounding) shows up scaled down by the same 2^-29, so it cannot hide a wrong rule. A quantity
  that float32 cannot represent (non-finite, or so small that float32 loses its digits) gets no
  estimate.

Each extra evaluation reuses the reference's compiled function (same shapes); the float64 truth
(or the float32 shadow) is one more compile. ``compare`` asks for these only when a verdict needs
them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_F32 = np.finfo(np.float32)
_SCALE_64_FROM_32 = float(np.finfo(np.float64).eps / _F32.eps)


class Evidence(NamedTuple):
    """``truth``: {key: float64 array} at the point, or None (float64); ``errors``: samples of jax.grad's error."""

    truth: dict | None
    errors: list


def _floats(tree, fn):
    return jax.tree_util.tree_map(lambda v: fn(v) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v, tree)


def cast(tree, dtype):
    """Every floating leaf of ``tree`` in ``dtype`` (integer leaves, e.g. labels, unchanged)."""
    return _floats(tree, lambda v: jnp.asarray(v).astype(dtype))


def move(tree, key, eps):
    """Every floating leaf moved by one rounding step, v (1 + s eps) with s = +/-1 at random (zeros stay zero)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, v in zip(keys, leaves):
        v = jnp.asarray(v)
        if jnp.issubdtype(v.dtype, jnp.floating):
            v = v * (1 + jax.random.rademacher(k, v.shape, v.dtype) * jnp.asarray(eps, v.dtype))
        out.append(v)
    return jax.tree_util.tree_unflatten(treedef, out)


def _host(values: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _high(evaluate, point) -> dict:
    with jax.enable_x64(True):
        return _host(evaluate(cast(point, jnp.float64)))


def measure(evaluate, point: tuple, n_moved: int, dtype, *, samples: int, key=None, same_pieces=None) -> Evidence:
    """jax.grad's own error on every quantity ``evaluate`` returns, at ``point`` (see the module docstring).

    Args:
      evaluate: ``point -> {key: array}``, the reference's quantities (jitted: it is called
        with the point in the compared dtype, in float64, and for float64 in float32).
      point: a tuple of pytrees, e.g. (params, x, y, mask); its floating leaves share ``dtype``.
      n_moved: the first ``n_moved`` entries (parameters and inputs) are moved for the extra
        samples; the rest (labels, mask, a cotangent) are data and stay.
      dtype: the compared precision.
      samples: extra points besides ``point``.
      key: PRNG key for the moves (default key 0: the same evidence every call).
    """
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, max(samples, 1))[:samples]
    if np.dtype(dtype) != np.dtype(np.float64):
        eps = float(jnp.finfo(dtype).eps)
        truth = _high(evaluate, point)
        errors = []
        for k in keys:
            q = (*move(point[:n_moved], k, eps), *point[n_moved:])
            low, high = _host(evaluate(q)), _high(evaluate, q)
            errors.append({name: low[name] - high[name] for name in low})
        return Evidence(truth, errors)
    reference = _host(evaluate(point))
    base = None if same_pieces is None else same_pieces(point)
    errors = []
    for k in keys:
        q = (*move(point[:n_moved], k, float(jnp.finfo(dtype).eps)), *point[n_moved:])
        if same_pieces is not None and not _equal(same_pieces(q), base):
            continue  # a kink crossed: the change is the function's, not rounding
        moved = _host(evaluate(q))
        errors.append({name: moved[name] - reference[name] for name in moved})
    return Evidence(None, errors)


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def _representable_in_float32(a) -> bool:
    """False for a quantity float32 cannot carry to its last digits: overflow, or all of it near underflow."""
    m = float(np.abs(a).max()) if a.size else 0.0
    return m < _F32.max / 4 and (m == 0 or m > _F32.tiny / _F32.eps)
