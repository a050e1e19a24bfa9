"""One row's verdict: manual vs reference, with jax.grad's own error where it was measured.

``judge`` is the one function that turns (manual, reference[, truth, error samples]) into a
``Row``; ``compare``, ``check_layer`` and ``gradcheck`` all use it. The three verdicts
(``tolerances.VERDICTS``; constants in ``tolerances.ErrorModel``):

* "fixed": normwise and elementwise relative error within the dtype's ``Tolerance``.
* "conditioning": fixed; or, where jax.grad's own error e_r (measured) exceeds ``tol.norm / K``
  relative, so that no correct implementation could be expected to meet the fixed tolerance,
  ||m - r|| <= K ||e_r|| and max|m - r| <= K max|e_r|. A well-conditioned row (e_r below that) is
  judged by the fixed tolerance alone: nothing is loosened there.
* "error-model": ||m - t|| <= k ||r - t|| + rho eps ||t|| and the same with max|.|: manual must be
  about as accurate as jax.grad against a float64 truth t (FlashAttention's test criterion).

An error sample is an array shaped like the reference: jax.grad's value minus a higher-precision
value of the same quantity at the same point (r - t), or at a nearby point, or (float64, no
higher precision) a float32 evaluation's error scaled by eps(float64)/eps(float32); gradcheck's
rows pass the finite difference's estimated error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from manualbp.verify.tolerances import ERROR_MODEL, ErrorModel, Tolerance


@dataclass
class Row:
    """One quantity of one layer, manual vs reference.

    ``norm_rel`` = ||m - r|| / max(||m||, ||r||); ``max_rel`` = max |m - r| / |r|
    over entries with |r| > floor x max|r|; ``exact`` = bitwise equal.
    ``note`` explains a row that is not a plain comparison (e.g. a kink).
    ``rule`` is the test that decided ``ok`` ("fixed", "conditioning", "error model",
    or gradcheck's "finite difference", "one-sided", "subgradient"); ``err_manual`` and
    ``err_ref`` are manual's and the reference's errors against a truth (or the reference's
    estimated error), normwise relative to max(||m||, ||r||), None where not measured;
    ``compared`` is False for a row that could not be compared (it neither passes nor fails);
    ``used`` is the fraction of its verdict's allowance the row used (<= 1 passes), for the figures.
    """

    layer: str
    quantity: str
    shape: tuple
    max_abs: float
    max_rel: float
    norm_rel: float
    exact: bool
    ok: bool
    note: str = ""
    rule: str = "fixed"
    err_manual: float | None = None
    err_ref: float | None = None
    compared: bool = True
    used: float | None = None


def _norm(a) -> float:
    return float(np.linalg.norm(a)) if a.size else 0.0


def _amax(a) -> float:
    return float(np.abs(a).max()) if a.size else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def judge(layer: str, quantity: str, manual, ref, tol: Tolerance, *, verdict: str = "fixed", truth=None,
          errors=(), eps: float | None = None, model: ErrorModel = ERROR_MODEL, note: str = "") -> Row:
    """The ``Row`` for one quantity, judged by ``verdict`` (see the module docstring).

    Args:
      layer, quantity: how the report names the row.
      manual, ref: the two arrays (any float dtype; compared in float64 on the host).
      tol: the fixed tolerance of the compared precision.
      verdict: "fixed", "conditioning" or "error-model".
      truth: the same quantity in a higher precision at the same point (float64); gives the error
        sample ``ref - truth`` and the manual error ``manual - truth``.
      errors: further samples of jax.grad's own error on this quantity (arrays shaped like ref).
      eps: the compared dtype's machine epsilon (the error model's rounding allowance).
      note: shown with the row.

    Returns:
      A ``Row``; ``rule`` says which test decided it, ``err_manual``/``err_ref`` are manual's and
      jax.grad's errors (normwise, relative to max(||manual||, ||ref||)) where measured.
    """
    m, r = _f64(manual), _f64(ref)
    if m.shape != r.shape:
        return Row(layer, quantity, tuple(r.shape), math.inf, math.inf, math.inf, False, False,
                   f"shape mismatch: manual {m.shape} vs reference {r.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        which = "manual" if not np.all(np.isfinite(m)) else "reference"
        return Row(layer, quantity, m.shape, math.nan, math.nan, math.nan, False, False,
                   f"non-finite values in {which} (exploding gradients?)")
    diff = np.abs(m - r)
    max_abs = _amax(diff)
    scale = max(_norm(m), _norm(r))
    norm_rel = _norm(diff) / scale if scale > 0 else 0.0
    big = np.abs(r) > tol.floor * _amax(r)
    max_rel = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    fixed_ok = norm_rel <= tol.norm and max_rel <= tol.elem
    row = Row(layer, quantity, m.shape, max_abs, max_rel, norm_rel, bool(np.array_equal(m, r)), fixed_ok, note,
              used=max(_ratio(norm_rel, tol.norm), _ratio(max_rel, tol.elem)))

    t = None if truth is None else _f64(truth)
    samples = [e for e in ([] if t is None else [r - t]) + [_f64(e) for e in errors]
               if e.shape == r.shape and np.all(np.isfinite(e))]
    if not samples:
        if verdict == "error-model":
            row.ok, row.rule = False, "error model"
            row.note = (note + "; " if note else "") + "no measurement of jax.grad's error (truth not finite)"
        return row
    e_r, e_r_max = max(_norm(e) for e in samples), max(_amax(e) for e in samples)
    unit = scale if scale > 0 else 1.0
    row.err_ref = e_r / unit
    if t is not None:
        row.err_manual = _norm(m - t) / unit
    if verdict == "error-model":
        if t is None:
            raise ValueError("judge: verdict 'error-model' needs a truth")
        allow = model.rounding * (eps or 0.0)
        row.used = max(_ratio(_norm(m - t), model.k * e_r + allow * _norm(t)),
                       _ratio(_amax(m - t), model.k * e_r_max + allow * _amax(t)))
        row.ok, row.rule = row.used <= 1, "error model"
    elif verdict == "conditioning" and not fixed_ok and e_r > tol.norm / model.conditioning * unit:
        row.used = max(_ratio(_norm(diff), model.conditioning * e_r), _ratio(max_abs, model.conditioning * e_r_max))
        row.ok, row.rule = row.used <= 1, "conditioning"
    return row


def compare_arrays(layer: str, quantity: str, manual, ref, tol: Tolerance, note: str = "") -> Row:
    """A ``Row`` for one pair of arrays judged by the fixed tolerance alone."""
    return judge(layer, quantity, manual, ref, tol, note=note)
