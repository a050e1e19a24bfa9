"""A directional derivative from finite differences, with an estimate of its error, across kinks.

Along a line phi(s) = f(x + s v), gradcheck evaluates phi at s = 0, +/-h, +/-h/2, +/-h/4, and the
forward's discrete choices there (a layer's ``kink_pattern``: ReLU signs, max-pool winners).
``estimate`` turns them into an estimate of phi'(0), its error, and how it was obtained:

* central (no choice changes on [-h, h]): D(s) = (phi(s) - phi(-s)) / 2s = phi'(0) + c s^2 +
  rounding. Richardson's extrapolation A(s) = D(s/2) + (D(s/2) - D(s)) / 3 cancels the s^2 term;
  the estimate is A(h/2) and its error |A(h/2) - A(h)| (A(h)'s error, a bound for A(h/2)'s) plus
  the rounding error of A(h/2), 6 sigma / h for a loss computed to within sigma.
* one-sided (a choice changes on one side only): the side whose choices stay those at s = 0
  (the piece whose derivative the backward's convention computes: ReLU'(0) = 0 means "off") gives
  the derivative there. F(s) = (phi(s) - phi(0)) / s = phi'(0+) + c s + rounding; the estimate is
  the extrapolation 2 F(h/4) - F(h/2), its error |(2 F(h/4) - F(h/2)) - (2 F(h/2) - F(h))| plus
  20 sigma / h. So a ReLU'(0) = 1 bug at an exact kink fails here.
* subgradient (both sides change, at a single kinked entry, each side consistent): the two
  one-sided derivatives bound the subgradients of phi at 0 (for one kink the convention's value is
  one of them, e.g. a max-pool tie routed to one winner), so the manual value must lie between
  them (the check torch users ask of gradcheck at kinks).
* not compared (several entries change on both sides): the convention's value need not lie
  between the one-sided derivatives, and nothing else measures it.

References: Richardson extrapolation of difference quotients (e.g. Press et al., Numerical
Recipes, sec. 5.7 "Numerical Derivatives").
"""

from __future__ import annotations

import numpy as np

from manualbp.verify.tolerances import FINITE_DIFFERENCE, FINITE_DIFFERENCE_REFINE

CENTRAL, RIGHT, LEFT, SUBGRADIENT, NONE = "central", "one-sided (right)", "one-sided (left)", "subgradient", "not compared"
KINDS = (CENTRAL, RIGHT, LEFT, SUBGRADIENT, NONE)
STEPS = (1.0, 0.5, 0.25, -0.25, -0.5, -1.0)  # the points s / h at which phi is evaluated besides s = 0


def _one_sided(f0, f1, f2, f4, h, sigma):
    """phi'(0+) from phi at h, h/2, h/4 (pass -h for the left side): extrapolated value and error."""
    F1, F2, F4 = (f1 - f0) / h, (f2 - f0) / (h / 2), (f4 - f0) / (h / 4)
    coarse, fine = 2 * F2 - F1, 2 * F4 - F2
    return fine, np.abs(fine - coarse) + 20 * sigma / abs(h)


def estimate(f0, values, same_right, same_left, consistent, single_kink, h: float, sigma):
    """Vectorized over directions/coordinates (``values`` has a leading axis of 6: phi at ``STEPS`` x h).

    The argument order is that of the line function's outputs (gradcheck's ``_along``), then h and sigma.

    Args:
      f0: phi(0).
      values: phi at s = h, h/2, h/4, -h/4, -h/2, -h.
      same_right / same_left: the choices at every s > 0 (resp. s < 0) equal those at 0.
      consistent: the choices agree among the points of each side.
      single_kink: one entry of the choices differs from those at 0 anywhere on [-h, h].
      h: the largest step.
      sigma: the rounding noise of phi (an absolute error).

    Returns:
      (value, error, lo, hi, kind): the estimate, its error estimate, the interval a
      subgradient must lie in (lo = hi = value unless kind is subgradient), and the kind
      (array of str).
    """
    f0, sigma = np.asarray(f0, np.float64), np.asarray(sigma, np.float64)
    p1, p2, p4, m4, m2, m1 = np.asarray(values, np.float64)
    d1, d2, d4 = (p1 - m1) / (2 * h), (p2 - m2) / h, (p4 - m4) / (h / 2)
    coarse, fine = d2 + (d2 - d1) / 3, d4 + (d4 - d2) / 3
    central, central_err = fine, np.abs(fine - coarse) + 6 * sigma / h
    right, right_err = _one_sided(f0, p1, p2, p4, h, sigma)
    left, left_err = _one_sided(f0, m1, m2, m4, -h, sigma)
    same_right, same_left = np.asarray(same_right, bool), np.asarray(same_left, bool)
    both = same_right & same_left
    sub = ~same_right & ~same_left & np.asarray(consistent, bool) & np.asarray(single_kink, bool)
    kind = np.select([both, same_right, same_left, sub], [CENTRAL, RIGHT, LEFT, SUBGRADIENT], NONE)
    value = np.select([both, same_right, same_left], [central, right, left], (right + left) / 2)
    error = np.select([both, same_right, same_left, sub], [central_err, right_err, left_err,
                                                          np.maximum(right_err, left_err)], 0.0)
    lo = np.where(sub, np.minimum(right, left), value)
    hi = np.where(sub, np.maximum(right, left), value)
    return value, error, lo, hi, kind


def refine(run, n, f0, h, sigma):
    """``estimate`` for n items (directions or coordinates), ``run(h, idx) -> line outputs for items idx``.

    Where a central estimate's error is dominated by rounding (it exceeds 1/10 of the fixed tolerance,
    relative: a tiny directional derivative), the step grows 10x at a time (up to 1000 h) while the
    error estimate shrinks and no kink enters: the step is chosen from the error estimate. ``f0`` and
    ``sigma``: phi(0) and its noise, one for all items or one per item.
    """
    f0, sigma = (np.broadcast_to(np.asarray(a, np.float64), (n,)) for a in (f0, sigma))
    value, error, lo, hi, kind = estimate(f0, *run(h, np.arange(n)), h, sigma)
    target = FINITE_DIFFERENCE.norm * FINITE_DIFFERENCE_REFINE
    todo = (kind == CENTRAL) & (error > target * np.abs(value))
    for m in (10, 100, 1000):
        idx = np.flatnonzero(todo)
        if not idx.size:
            break
        v2, e2, lo2, hi2, k2 = estimate(f0[idx], *run(h * m, idx), h * m, sigma[idx])
        better = (k2 == CENTRAL) & (e2 < error[idx])
        for a, b in ((value, v2), (error, e2), (lo, lo2), (hi, hi2)):
            a[idx[better]] = b[better]
        todo[:] = False
        todo[idx[better]] = e2[better] > target * np.abs(v2[better])
    return value, error, lo, hi, kind
