"""One row's verdict: the one place a quantity is decided, under one ``Rule`` (``tolerances``).

``judge`` turns (manual, reference[, truth, error samples, a finite difference's estimate]) into a
``Row``; ``structure_row`` is the row of a quantity that could not be compared because one side
does not have it in the right form. ``compare``, ``check_layer``, ``gradcheck`` and ``check_vjp``
build every row with these two and never edit a row afterwards; the twin verdict applies
``within_own_error``, the conditioning rule on normwise figures. The rules:

* ``FIXED``: normwise and elementwise relative error within the dtype's ``Tolerance``.
* ``CONDITIONING``: fixed; or, where jax.grad's own error e_r (measured) exceeds ``tol.norm / K``
  relative, so that no correct implementation could be expected to meet the fixed tolerance,
  ||m - r|| <= K ||e_r|| and max|m - r| <= K max|e_r|. A well-conditioned row (e_r below that) is
  judged by the fixed tolerance alone: nothing is loosened there.
* ``ERROR_MODEL``: ||m - t|| <= k ||r - t|| + rho eps ||t|| and the same with max|.|: manual must be
  about as accurate as jax.grad against a float64 truth t (FlashAttention's test criterion).
* ``FINITE_DIFFERENCE`` (and ``ONE_SIDED``, ``SUBGRADIENT`` at kinks): the conditioning rule against a
  finite difference, its estimated error as the error sample (``FiniteDifference``).
* ``TAYLOR``: m is a derivative along a line, r the function's changes along it (``taylor.Taylor``): the
  first-order remainder must fall as h^2 (measured rate >= ``TAYLOR.pass_rate``); not compared when
  rounding leaves too few steps to fit.
* ``EXACT``: max |m - r| <= an absolute allowance (0: bitwise equal).
* ``STRUCTURE``: missing, extra, or another shape/dtype/tree: a FAIL, whatever the values.

An error sample is an array shaped like the reference: jax.grad's value minus a higher-precision
value of the same quantity at the same point (r - t), or at a nearby point, or (float64, no
higher precision) a float32 evaluation's error scaled by eps(float64)/eps(float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from manualbp.verify import taylor
from manualbp.verify.finite_differences import LEFT, NONE, RIGHT, SUBGRADIENT
from manualbp.verify.tolerances import ERROR_MODEL, FINITE_DIFFERENCE_MODEL, TAYLOR, ErrorModel, Rule, Tolerance

__all__ = ["FiniteDifference", "Row", "Rule", "judge", "not_compared_row", "structure_row", "within_own_error"]

# the kinds of a structure row (its note starts with one)
MISSING, EXTRA, WRONG_STRUCTURE, NOT_COMPUTED = "missing", "extra", "wrong structure", "not computed"
EMPTY = "empty"  # the note of a row over zero entries: not compared


@dataclass
class Row:
    """One quantity of one layer, manual vs reference.

    ``norm_rel`` = ||m - r|| / max(||m||, ||r||); ``max_rel`` = max |m - r| / |r|
    over entries with |r| > floor x max|r|; ``exact`` = bitwise equal.
    ``note`` explains a row that is not a plain comparison (e.g. a kink, a missing quantity).
    ``rule`` is the ``Rule`` that decided ``ok``; ``err_manual`` and ``err_ref`` are manual's and the
    reference's errors against a truth (or the reference's estimated error), normwise relative to
    max(||m||, ||r||), None where not measured; ``compared`` is False for a row that could not be
    compared (it neither passes nor fails); ``used`` is the fraction of its rule's allowance the row
    used (<= 1 passes), for the figures; ``allowed`` the normwise relative difference the rule allowed
    it (what a diagnosis must explain the difference to within); ``diagnosis`` what a failing row's
    difference is (``manualbp.verify.forensics``; None on passing rows); ``tolerance`` the fixed tolerance the row
    was judged with (rows of one report may differ: check_vjp's finite-difference rows and its vmap rows).
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
    rule: Rule = Rule.FIXED
    err_manual: float | None = None
    err_ref: float | None = None
    compared: bool = True
    used: float | None = None
    allowed: float | None = None
    diagnosis: object = None
    tolerance: Tolerance | None = None


class FiniteDifference(NamedTuple):
    """A finite difference's estimate of the quantity, entry by entry (``finite_differences.estimate``).

    ``value`` and ``error``: the estimate and its estimated error; ``lo``/``hi``: the one-sided
    derivatives where a kink was crossed on both sides; ``kind``: CENTRAL, RIGHT, LEFT, SUBGRADIENT or
    NONE (several kinks: not comparable).
    """

    value: object
    error: object
    lo: object
    hi: object
    kind: object


def _norm(a) -> float:
    return float(np.linalg.norm(a)) if a.size else 0.0


def _amax(a) -> float:
    return float(np.abs(a).max()) if a.size else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _dtype(a):
    return np.asarray(a).dtype if not hasattr(a, "dtype") else np.dtype(a.dtype)


def within_own_error(err, own, fixed: float, k: float):
    """The conditioning rule on normwise figures: err <= fixed, or err <= k x own (the reference's own error).

    Works on floats and on arrays of figures alike (the twin verdict judges every step and leaf at once);
    NaN never passes.
    """
    return (err <= fixed) | (err <= k * own)


def structure_row(layer: str, quantity: str, kind: str, detail: str, shape=()) -> Row:
    """The failing row of a quantity one side does not have in a comparable form.

    ``kind``: ``MISSING`` (the reference has it, the manual side returned nothing or None), ``EXTRA``
    (the manual side returned a quantity the reference does not differentiate), ``WRONG_STRUCTURE``
    (another shape, dtype or tree), ``NOT_COMPUTED`` (computing it raised: ``detail`` says what).
    """
    return Row(layer, quantity, tuple(shape), math.inf, math.inf, math.inf, False, False, f"{kind}: {detail}",
               rule=Rule.STRUCTURE)


def not_compared_row(layer: str, quantity: str, reason: str, shape=()) -> Row:
    """The row of a quantity that was deliberately not compared (``reason``, e.g. every entry excluded by the
    caller): it neither passes nor fails, and a report of such rows only is INCONCLUSIVE, never a PASS."""
    return Row(layer, quantity, tuple(shape), math.nan, math.nan, math.nan, False, True, reason, compared=False)


def _with_note(note: str, more: str) -> str:
    return "; ".join(filter(None, [note, more]))


def judge(layer: str, quantity: str, manual, ref, tol: Tolerance, *, rule: Rule = Rule.FIXED, truth=None,
          errors=(), eps: float | None = None, model: ErrorModel | None = None, allowed: float = 0.0,
          note: str = "", why: str = "", unmeasured: bool = False, manual_name: str = "manual") -> Row:
    """The ``Row`` for one quantity, judged by ``rule`` (see the module docstring).

    Args:
      layer, quantity: how the report names the row.
      manual: the value under test (any float dtype; compared in float64 on the host).
      ref: the reference value; for ``Rule.FINITE_DIFFERENCE`` a ``FiniteDifference`` estimate; for
        ``Rule.TAYLOR`` a ``taylor.Taylor`` (the function's changes along the line whose derivative manual claims).
      tol: the fixed tolerance of the compared precision (or a caller's own, with an ``atol``).
      rule: ``FIXED``, ``CONDITIONING``, ``ERROR_MODEL``, ``FINITE_DIFFERENCE``, ``TAYLOR`` or ``EXACT``.
      truth: the same quantity in a higher precision at the same point (float64); gives the error
        sample ``ref - truth`` and the manual error ``manual - truth``.
      errors: further samples of the reference's own error on this quantity (arrays shaped like ref).
      eps: the compared dtype's machine epsilon (the error model's rounding allowance).
      model: the constants of the rule (default: ``ERROR_MODEL``; ``FINITE_DIFFERENCE_MODEL`` for
        finite differences).
      allowed: ``Rule.EXACT``'s allowance on max |manual - ref| (0: bitwise equal).
      note: shown with the row.
      why: added to the note if the row fails (what a failure of this quantity means).
      unmeasured: the reference's own error on this quantity is known to be beyond what ``errors`` measure
        (float64 where float32 loses the quantity, and no 50-digit truth): a row that fails the fixed
        tolerance is then not compared, rather than judged against an estimate known to be too small.
      manual_name: how the notes name the side under test ("manual"; check_vjp: "fn").

    Returns:
      A ``Row``; ``rule`` says which test decided it (the conditioning rule applies only where the
      fixed tolerance fails and the reference's own error makes it unreachable; a finite difference's
      row is named by the kinds of its entries), ``err_manual``/``err_ref`` are manual's and jax.grad's
      errors (normwise, relative to max(||manual||, ||ref||)) where measured.
    """
    if Rule(rule) is Rule.TAYLOR:
        row = _taylor(layer, quantity, manual, ref, note)
    else:
        row = _decide(layer, quantity, manual, ref, tol, Rule(rule), truth, errors, eps, model, allowed, note,
                      unmeasured, manual_name)
    if why and not row.ok:
        row.note = _with_note(row.note, why)
    return row


def _taylor(layer, quantity, manual, data, note) -> Row:
    """``Rule.TAYLOR``: the rate at which |change(h) - h manual| falls; not compared where no range of h is usable."""
    fit = taylor.rate(manual, data)
    est = float(np.linalg.norm(fit.estimate))
    # relative to the larger of the claimed derivative and the function's own (a rule that returns 0 is not inf off)
    rel = _ratio(fit.remainder, fit.h_lo * max(float(np.linalg.norm(np.asarray(manual, np.float64))), est))
    span = f"h {fit.h_hi:.0e}..{fit.h_lo:.0e}"
    if fit.rate is None:
        return Row(layer, quantity, np.shape(manual), fit.remainder, rel, rel, False, True,
                   _with_note(f"rounding level: the remainder exceeds {TAYLOR.above_floor:g}x its rounding floor at "
                              f"{fit.kept} of {len(data.h)} steps (fewer than {TAYLOR.window}: nothing to fit; linear "
                              "along the line, or too noisy)", note), rule=Rule.TAYLOR, compared=False)
    ok = fit.rate >= TAYLOR.pass_rate
    return Row(layer, quantity, np.shape(manual), fit.remainder, rel, rel, False, ok,
               _with_note(f"rate {fit.rate:.2f} over {span} (right: 2, wrong: 1)", note), rule=Rule.TAYLOR,
               used=max(0.0, (2 - fit.rate) / (2 - TAYLOR.pass_rate)), allowed=_ratio(fit.estimate_error, est))


def _decide(layer, quantity, manual, ref, tol, rule, truth, errors, eps, model, allowed, note, unmeasured,
            who="manual") -> Row:
    compared, decided = True, rule
    if rule is Rule.FINITE_DIFFERENCE:
        fd = ref
        kind, m = np.asarray(fd.kind), _f64(manual)
        # the subgradient check: the nearest end of [lo, hi]; entries with several kinks are not compared
        ref = np.where(kind == SUBGRADIENT, np.clip(m, fd.lo, fd.hi), np.where(kind == NONE, m, fd.value))
        errors = [*errors, fd.error]
        compared = bool(np.any(kind != NONE))
        decided = (Rule.SUBGRADIENT if np.any(kind == SUBGRADIENT) else Rule.ONE_SIDED if np.any((kind == LEFT) | (kind == RIGHT))
                   else Rule.FINITE_DIFFERENCE)
        model = model or FINITE_DIFFERENCE_MODEL
    model = model or ERROR_MODEL
    if np.shape(manual) != np.shape(ref):
        return structure_row(layer, quantity, WRONG_STRUCTURE,
                             f"{who} has shape {tuple(np.shape(manual))}, the reference {tuple(np.shape(ref))}",
                             np.shape(ref))
    if rule is not Rule.FINITE_DIFFERENCE and _dtype(manual) != _dtype(ref):
        return structure_row(layer, quantity, WRONG_STRUCTURE,
                             f"{who} has dtype {_dtype(manual).name}, the reference {_dtype(ref).name}", np.shape(ref))
    m, r = _f64(manual), _f64(ref)
    if m.size == 0:  # nothing to compare: neither a PASS nor a FAIL (a report of such rows alone is INCONCLUSIVE)
        return Row(layer, quantity, m.shape, 0.0, 0.0, 0.0, False, True, _with_note(note, f"{EMPTY}: no entries"),
                   rule=decided, compared=False)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        which = who if not np.all(np.isfinite(m)) else "reference"
        return Row(layer, quantity, m.shape, math.nan, math.nan, math.nan, False, False,
                   _with_note(note, f"non-finite values in {which}"), rule=decided)
    diff = np.abs(m - r)
    max_abs = _amax(diff)
    scale = max(_norm(m), _norm(r))
    norm_rel = _norm(diff) / scale if scale > 0 else 0.0
    big = np.abs(r) > tol.floor * _amax(r)
    max_rel = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    exact = bool(np.array_equal(m, r))
    if rule is Rule.EXACT:
        return Row(layer, quantity, m.shape, max_abs, max_rel, norm_rel, exact, exact or max_abs <= allowed, note,
                   rule=rule, used=_ratio(max_abs, allowed), allowed=allowed / scale if scale > 0 else 0.0)
    fixed_ok = norm_rel <= tol.norm and max_rel <= tol.elem
    if tol.atol:  # a caller's absolute allowance, as numpy.allclose: |m - r| <= atol + elem |r| entry by entry
        fixed_ok = (_norm(diff) <= tol.atol * math.sqrt(diff.size) + tol.norm * scale
                    and bool(np.all(diff[big] <= tol.atol + tol.elem * np.abs(r[big]))))
    row = Row(layer, quantity, m.shape, max_abs, max_rel, norm_rel, exact, fixed_ok or not compared, note,
              rule=Rule.FIXED if rule in (Rule.CONDITIONING, Rule.ERROR_MODEL) else decided, compared=compared,
              used=max(_ratio(norm_rel, tol.norm), _ratio(max_rel, tol.elem)), allowed=tol.norm, tolerance=tol)

    if unmeasured and not fixed_ok and rule is Rule.CONDITIONING and truth is None:
        row.ok, row.compared = True, False
        row.note = _with_note(note, "jax.grad's error unmeasured: not compared (float32 loses this quantity entirely, "
                                    "e.g. a saturated softmax, and a 50-digit truth of the model is over budget); check a "
                                    "smaller batch, or in float32 against float64")
        return row
    t = None if truth is None else _f64(truth)
    samples = [e for e in ([] if t is None else [r - t]) + [_f64(e) for e in errors]
               if e.shape == r.shape and np.all(np.isfinite(e))]
    if not samples:
        if rule is Rule.ERROR_MODEL:
            row.ok, row.rule = False, rule
            row.note = _with_note(note, "no measurement of jax.grad's error (truth not finite)")
        return row
    e_r, e_r_max = max(_norm(e) for e in samples), max(_amax(e) for e in samples)
    unit = scale if scale > 0 else 1.0
    row.err_ref = e_r / unit
    if t is not None:
        row.err_manual = _norm(m - t) / unit
    if rule is Rule.ERROR_MODEL:
        if t is None:
            raise ValueError("judge: rule 'error-model' needs a truth")
        allow = model.rounding * (eps or 0.0)
        row.used = max(_ratio(_norm(m - t), model.k * e_r + allow * _norm(t)),
                       _ratio(_amax(m - t), model.k * e_r_max + allow * _amax(t)))
        row.ok, row.rule = row.used <= 1, rule
        row.allowed = ((1 + model.k) * e_r + allow * _norm(t)) / unit  # ||m - r|| <= ||m - t|| + ||t - r||
    elif rule is not Rule.FIXED and not fixed_ok and e_r > tol.norm / model.conditioning * unit:
        row.used = max(_ratio(_norm(diff), model.conditioning * e_r), _ratio(max_abs, model.conditioning * e_r_max))
        row.ok = row.used <= 1 or not compared
        row.allowed = max(tol.norm, model.conditioning * e_r / unit)
        if rule is Rule.CONDITIONING:
            row.rule = rule
    return row
