"""jax.grad's own rounding error, measured: a float64 truth, and samples of the error at nearby points.

A verdict that accounts for rounding needs to know how far jax.grad's value is from the exact one
on each quantity. ``measure`` gets that from the reference alone, at the compared point:

* below float64 (bfloat16, float16, float32): the **truth** is the reference evaluated in float64
  at the same point (inputs and parameters upcast, which is exact); jax.grad's error is
  r - truth. Further samples of that error come from ``samples`` nearby points: every float input
  and parameter moved by one rounding step (v (1 +/- eps), a random sign per entry), the reference
  evaluated there in the compared dtype and in float64.
* float64 has no higher precision on the host, so the error is estimated two ways, and the larger
  sample counts. (a) From float32: at the point rounded to float32 (and at ``samples`` moved
  points), the float32 reference minus the float64 reference at the same float32 point, scaled by
  eps(float64) / eps(float32) = 2^-29. Rounding errors are first order in the unit roundoff, so the
  scaled float32 error measures the float64 one, cancellation included; a discrete change in
  float32 (a ReLU or max-pool winner flipped by rounding) shows up scaled down by the same 2^-29,
  so it cannot hide a wrong rule. But float32 loses a quantity whose condition number exceeds
  ~1/eps(float32) entirely (BatchNorm over a batch of 2 at input scale 100), and then the scaled
  error underestimates. (b) So, where every discrete choice of the model's forward is visible
  (``choices``), also the reference's change when inputs and parameters move by one float64
  rounding step, at moved points where no choice changed: a moved point that crossed a kink
  would measure the function's jump, not rounding, and is not used. A quantity that float32
  cannot represent (overflow, or all of it near underflow) gets no float32 estimate.

Each extra evaluation reuses the reference's compiled function (same shapes); the float64 truth
(or the float32 shadow) is one more compile. ``compare`` asks for these only when a verdict needs
them.

Inside a compiled training step (the twin verdict), the same measurements run on the device:
``rounding_neighbour`` moves every parameter by one rounding unit with hashed signs, ``batch_orders``
gives other orders of a batch (other rounding of its sums), ``widen`` casts to float64 for a truth.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualbp.layers.code_key import Keyed
from manualbp.layers.walk import choices_declared
from manualbp.verify import highprec
from manualbp.verify.tolerances import HIGH_PRECISION_BUDGET

_F32 = np.finfo(np.float32)
_SCALE_64_FROM_32 = float(np.finfo(np.float64).eps / _F32.eps)


class Evidence(NamedTuple):
    """``truth``: {key: float64 array} at the point, or None; ``errors``: samples of jax.grad's error; ``unmeasured``:
    the keys whose error nothing here measures (float64: float32 loses them, and a 50-digit truth is over budget)."""

    truth: dict | None
    errors: list
    unmeasured: frozenset = frozenset()


def _is_float(v) -> bool:
    return jnp.issubdtype(np.asarray(v).dtype, jnp.floating)


def cast(tree, dtype):
    """Every floating leaf of ``tree`` in ``dtype`` (integer leaves, e.g. labels, unchanged).

    Converted on the host (numpy, ml_dtypes for bfloat16): an eager device conversion would compile
    one small program per leaf shape. For float64, call it where x64 is enabled.
    """
    return jax.tree_util.tree_map(lambda v: jax.device_put(np.asarray(v).astype(dtype)) if _is_float(v) else v, tree)


def move(tree, seed: int, eps: float):
    """Every floating leaf moved by one rounding step, v (1 + s eps) with s = +/-1 at random (zeros stay zero).

    Computed exactly in float64 on the host (a float of at most 24 significant bits times 1 +/- eps
    is exact there), then rounded to the leaf's dtype: a move of one or two units in the last place.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for v in leaves:
        if _is_float(v):
            a = np.asarray(v)
            moved = a.astype(np.float64) * (1 + eps * rng.choice([-1.0, 1.0], size=a.shape))
            v = jax.device_put(moved.astype(a.dtype))
        out.append(v)
    return jax.tree_util.tree_unflatten(treedef, out)


def _host(values: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _high(evaluate, point) -> dict:
    with jax.enable_x64(True):
        return _host(evaluate(cast(point, jnp.float64)))


def measure(evaluate, point: tuple, n_moved: int, dtype, *, samples: int, seed: int = 0, same_pieces=None,
            need=None) -> Evidence:
    """jax.grad's own error on every quantity ``evaluate`` returns, at ``point`` (see the module docstring).

    Args:
      evaluate: ``point -> {key: array}``, the reference's quantities (jitted: it is called
        with the point in the compared dtype, in float64, and for float64 in float32).
      point: a tuple of pytrees, e.g. (params, x, y, mask); its floating leaves share ``dtype``.
      n_moved: the first ``n_moved`` entries (parameters and inputs) are moved for the extra
        samples; the rest (labels, mask, a cotangent) are data and stay.
      dtype: the compared precision.
      samples: extra points besides ``point``.
      seed: seed of the moves (the same evidence on every call).
      same_pieces: for float64, ``choices(model)``: ``(params, x) -> discrete choices`` when every
        one is visible; enables estimate (b).
      need: the keys whose rows need the measurement (those that failed the fixed tolerance; None: all):
        a 50-digit truth is computed only where one of them is a quantity float32 loses.
    """
    keys = [seed + i for i in range(samples)]
    if np.dtype(dtype) != np.dtype(np.float64):
        eps = float(jnp.finfo(dtype).eps)
        truth = _high(evaluate, point)
        errors = []
        for k in keys:
            q = (*move(point[:n_moved], k, eps), *point[n_moved:])
            low, high = _host(evaluate(q)), _high(evaluate, q)
            errors.append({name: low[name] - high[name] for name in low})
        return Evidence(truth, errors)
    q0 = cast(point, jnp.float32)
    errors, lost = [], set()
    for q in [q0, *((*move(q0[:n_moved], k, float(_F32.eps)), *q0[n_moved:]) for k in keys)]:
        low, high = _host(evaluate(q)), _high(evaluate, q)
        errors.append({name: (low[name] - high[name]) * _SCALE_64_FROM_32 for name in low
                       if _representable_in_float32(high[name])})
        lost |= {name for name in low if _lost_in_float32(low[name], high[name])}
    unmeasured = frozenset(lost if need is None else lost & set(need))  # the float32-based estimate is a lower bound
    if same_pieces is not None:
        here, base = _host(evaluate(point)), same_pieces(*point[:n_moved])
        for k in keys:
            q = (*move(point[:n_moved], 1000 + k, float(jnp.finfo(dtype).eps)), *point[n_moved:])
            if _equal(same_pieces(*q[:n_moved]), base):
                moved = _host(evaluate(q))
                errors.append({name: moved[name] - here[name] for name in moved})
    return Evidence(None, errors, unmeasured)


def precise_truth(evaluate, point: tuple) -> dict | None:
    """The reference's quantities at ``point`` in 50+ digits (``highprec``), rounded to float64; None over budget.

    The truth where the float64 one is not (float64 loses a quantity as float32 does, only later: a saturated
    softmax) and where float64 has no higher precision to check against (float64 itself). A failing row gets this
    second look before it FAILs (``compare.judge_all``); it costs ``highprec.cost`` Python calls per pass.
    """
    fn = lambda *pt: evaluate(pt)  # noqa: E731
    if highprec.cost(fn, *point) > HIGH_PRECISION_BUDGET:
        return None
    return _host(highprec.truth(fn, *point))


def _lost_in_float32(low, high) -> bool:
    """float32 has lost the quantity entirely (its error is of the quantity's own size, or it cannot represent it):
    the scaled float32 error then bounds float64's from below only. A saturated softmax: y_k = 1 - 1e-10 rounds
    to 1 in float32, and float64's error, which keeps those digits, is no longer 2^-29 times float32's."""
    scale = float(np.linalg.norm(high))
    return not _representable_in_float32(high) or (scale > 0 and float(np.linalg.norm(low - high)) >= 0.5 * scale)


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def choices(model):
    """``(params, x) -> the manual forward's discrete choices`` (jitted) if the model declares all of them, else None.

    Whether a forward makes discrete choices is each layer's own declaration (``kink_pattern``,
    composed by containers: ``manualbp.layers.walk.choices_declared``).
    """
    return _choices(Keyed(model)) if choices_declared(model) else None


@lru_cache(maxsize=32)
def _choices(key: Keyed):
    (model,) = key.value
    return jax.jit(lambda params, x: model.kink_pattern(model.forward(params, x)[1]))


def batch_orders(n: int, count: int) -> list:
    """``count`` fixed random orders of a batch of n examples (the same on every call).

    Random, not structured: a reversal or a rotation by half keeps every pair of a pairwise (tree) reduction
    together, and addition is commutative, so such orders can reproduce the very same rounding.
    """
    rng = np.random.default_rng(0)
    return [rng.permutation(n) for _ in range(count)]


def _signs(shape, seed: int, dtype):
    """+-1 per entry, pseudo-random: bit 0 of a 32-bit integer hash (murmur3's finalizer) of (entry index, seed).

    A few integer ops per entry, where jax.random's threefry, once per leaf and neighbour, would be most of
    a compiled twin step's compile time.
    """
    h = lax.iota(jnp.uint32, math.prod(shape)) + jnp.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
        h = h ^ (h >> shift)
        if mul is not None:
            h = h * jnp.uint32(mul)
    return (1 - 2 * (h & 1).astype(dtype)).reshape(shape)


def rounding_neighbour(params, i: int):
    """``params`` with every entry moved by one rounding unit, p (1 + eps s), s = +-1 pseudo-random (seed ``i``).

    ``move``'s counterpart inside a compiled function (traceable; no host round trip).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return jax.tree_util.tree_unflatten(treedef, [p * (1 + jnp.finfo(p.dtype).eps * _signs(p.shape, 1000 * i + j, p.dtype))
                                                  for j, p in enumerate(leaves)])


def widen(tree):
    """Every floating array of ``tree`` in float64 (integers, e.g. token ids, stay as they are); traceable."""
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _representable_in_float32(a) -> bool:
    """False for a quantity float32 cannot carry to its last digits: overflow, or all of it near underflow."""
    m = float(np.abs(a).max()) if a.size else 0.0
    return m < _F32.max / 4 and (m == 0 or m > _F32.tiny / _F32.eps)
