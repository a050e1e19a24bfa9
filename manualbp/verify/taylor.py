"""The Taylor test: a derivative is right when the first-order remainder falls as h^2.

For a function f, a point x, a direction v and (for a VJP) a cotangent u, with g the derivative the rule
under test claims along v (<J^T u, v> from a VJP, J v from a JVP),

.. math::
    r(h) = \\| \\phi(h) - \\phi(0) - h\\, g \\|, \\qquad \\phi(h) = \\langle u, f(x + h v) \\rangle
    \\;\\text{(or } f(x + h v)\\text{)},

is :math:`O(h^2)` when g is the derivative and about :math:`h \\|g - \\phi'(0)\\|` when it is not. Measured on a
geometric ladder of steps, the slope of log r against log h is the convergence rate: 2 right, 1 wrong. No step size
is tuned: the ladder only has to reach the regime where a first-order error dominates.

Rounding flattens the curve: phi(h) - phi(0) carries the rounding noise of f (``floor``), and below a few times that
r(h) is noise. So a step counts only where r(h) exceeds ``TAYLOR.above_floor`` x its floor, and the rate is the
least-squares slope over the ``TAYLOR.window`` smallest such steps (where a first-order error, if any, shows first).
With fewer such steps there is nothing to fit (f linear along v, or too noisy): not compared, never a PASS.

References: P. E. Farrell, D. A. Ham, S. W. Funke, M. E. Rognes, "Automated derivation of the adjoint of high-level
transient finite element programs", SIAM J. Sci. Comput. 35 (2013) (dolfin-adjoint's ``taylor_test``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from manualbp.verify.tolerances import TAYLOR, TaylorTest


class Taylor(NamedTuple):
    """What ``verdict.judge`` needs to judge a derivative g by the Taylor test (``Rule.TAYLOR``).

    ``h``: the steps (decreasing); ``change``: phi(h) - phi(0) at each step (shape ``(len(h),)`` or
    ``(len(h), n)`` for a vector-valued phi); ``floor``: the rounding floor of each remainder (absolute).
    """

    h: object
    change: object
    floor: object


class Rate(NamedTuple):
    """The measured rate, over which steps, and the remainder at the smallest of them.

    ``rate`` is None when fewer than ``window`` steps are above the floor (``kept`` says how many are).
    """

    rate: float | None
    kept: int
    h_lo: float
    h_hi: float
    remainder: float
    estimate: object  # phi'(0) from the function alone, change / h at the smallest kept step (what g should be)
    estimate_error: float  # its error: |change / h| there minus at the next larger step, plus floor / h


def steps(constants: TaylorTest = TAYLOR) -> np.ndarray:
    """The ladder h_max, h_max 10^(-1/per_decade), ..., down to h_min."""
    n = int(round(np.log10(constants.h_max / constants.h_min) * constants.per_decade)) + 1
    return constants.h_max * 10.0 ** (-np.arange(n) / constants.per_decade)


def remainders(g, data: Taylor) -> np.ndarray:
    """r(h) = ||change(h) - h g|| for every step (float64)."""
    h = np.asarray(data.h, np.float64)
    change = np.asarray(data.change, np.float64).reshape(len(h), -1)
    g = np.asarray(g, np.float64).reshape(1, -1)
    return np.linalg.norm(change - h[:, None] * g, axis=1)


def rate(g, data: Taylor, constants: TaylorTest = TAYLOR) -> Rate:
    """The log-log slope of r(h) over the ``window`` smallest steps where r(h) > ``above_floor`` x floor."""
    h = np.asarray(data.h, np.float64)
    r = remainders(g, data)
    change = np.asarray(data.change, np.float64).reshape(len(h), -1)
    floor = np.broadcast_to(np.asarray(data.floor, np.float64), h.shape)
    kept = np.flatnonzero(np.isfinite(r) & np.all(np.isfinite(change), axis=1) & (r > constants.above_floor * floor))
    if kept.size < constants.window:
        last = int(kept[-1]) if kept.size else int(np.argmin(h))
        return Rate(None, int(kept.size), float(h[last]), float(h[last]), float(r[last]), *_estimate(h, change, floor,
                                                                                                         last, kept))
    window = kept[np.argsort(h[kept])[: constants.window]]  # the smallest kept steps
    slope = float(np.polyfit(np.log10(h[window]), np.log10(r[window]), 1)[0])
    low = int(window[np.argmin(h[window])])
    return Rate(slope, int(kept.size), float(h[low]), float(h[window].max()), float(r[low]),
                *_estimate(h, change, floor, low, window))


def _estimate(h, change, floor, low, kept):
    """phi'(0) ~ change / h at step ``low``, and its error: the change of that quotient to the next larger kept step
    (its O(h) truncation, a bound since the steps grow) plus the rounding floor / h."""
    est = change[low] / h[low]
    larger = [int(i) for i in kept if h[i] > h[low]]
    nxt = min(larger, key=lambda i: h[i]) if larger else None
    trunc = float(np.linalg.norm(est - change[nxt] / h[nxt])) if nxt is not None else float(np.linalg.norm(est))
    return est, trunc + float(floor[low]) / float(h[low])
