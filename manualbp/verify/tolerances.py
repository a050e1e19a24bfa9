"""Every rule a verdict can apply, and every constant of every rule, with the reason for its value.

A row of a report is decided by ``verdict.judge`` under one ``Rule``; the rule and this table are the
only places a threshold comes from (tests and scripts read them here too).

Fixed tolerances (``tolerance(dtype)``), manual vs jax.grad in the same precision. On a prototype of
the MLP, CNN and RNN (5 seeds) float32 agreed to normwise relative error <= 5e-7 and elementwise
relative error <= 3e-4 on entries above 1e-3 x max|ref|; float64 to <= 1e-14 normwise. The
thresholds keep a 10-20x margin over those figures. They are right for well-conditioned rows in
float32 and float64, and wrong in two places, which the rules that measure jax.grad's own error
handle:

* low precision (bfloat16, float16): rounding errors of a few percent are normal, and no fixed
  number separates them from a wrong rule; ``Rule.ERROR_MODEL`` compares manual's error against a
  float64 truth with jax.grad's own error against it;
* ill-conditioned rows in float32/float64 (an exactly-zero gradient that both sides compute as
  rounding noise, a gradient that is a small difference of large terms): ``Rule.CONDITIONING``
  allows a multiple of jax.grad's own rounding error, measured.

Finite differences carry their own error estimate (truncation from two step sizes, rounding from
the noise of the loss): ``Rule.FINITE_DIFFERENCE`` and its kink variants (``manualbp.verify.gradcheck``).
The Taylor test needs no step size at all: ``Rule.TAYLOR`` judges the measured rate at which a
first-order remainder falls (``manualbp.verify.taylor``).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Rule(str, Enum):
    """How one row (or a whole report, for the rules a caller can ask for) was judged.

    The value is the one spelling used in rows, report headers, JSON and the ``verdict=`` argument.
    """

    FIXED = "fixed"  # normwise and elementwise relative error within the dtype's Tolerance
    CONDITIONING = "conditioning"  # fixed; or within K x jax.grad's own error where that makes fixed unreachable
    ERROR_MODEL = "error-model"  # manual's error vs a float64 truth within k x jax.grad's own + rounding
    FINITE_DIFFERENCE = "finite-difference"  # vs a central finite difference, within its estimated error
    ONE_SIDED = "one-sided"  # at a kink: vs the derivative from the side whose discrete choices are those at w
    SUBGRADIENT = "subgradient"  # a kink crossed on both sides: manual between the left and right derivatives
    TAYLOR = "taylor"  # the first-order remainder falls as h^2 (measured log-log rate) where it is above rounding
    TWIN_STEP = "twin-step"  # a training step's gradient vs the reference at the same parameters and batch
    EXACT = "exact"  # bitwise equal (or within an absolute allowance given by the caller)
    STRUCTURE = "structure"  # a quantity missing, extra, or of another shape/dtype/tree: always a FAIL

    def __str__(self) -> str:
        return self.value


class Tolerance(NamedTuple):
    """Pass when normwise <= ``norm`` and elementwise <= ``elem``.

    ``elem`` applies to entries whose reference magnitude exceeds
    ``floor`` x max|ref| (relative error of near-zero entries measures noise).
    ``atol``: an absolute allowance on top, given by a caller (``check_vjp(..., atol=)``), as in
    ``numpy.allclose``: an entry passes within atol + elem |ref|, the whole within atol sqrt(n) + norm
    max(||m||, ||ref||). The table's tolerances have none (0).
    """

    norm: float
    elem: float
    floor: float = 1e-3
    atol: float = 0.0


class ErrorModel(NamedTuple):
    """The constants of the rules that measure the reference's own error.

    ``Rule.ERROR_MODEL`` (FlashAttention's test criterion: Dao et al., tests/test_flash_attn.py): with
    a float64 truth t of the same quantity at the same point, manual m and jax.grad's r pass when

    .. math::
        \\|m - t\\| \\le k \\|r - t\\| + \\rho\\, \\epsilon \\|t\\| \\quad\\text{and}\\quad
        \\max|m - t| \\le k \\max|r - t| + \\rho\\, \\epsilon \\max|t|,

    epsilon the dtype's machine epsilon.

    ``Rule.CONDITIONING``: a row whose fixed tolerance cannot hold because the reference itself is
    off by more than ``tol.norm / conditioning`` (relative) passes when ||m - r|| <= K ||r - t|| and
    max|m - r| <= K max|r - t|, K = ``conditioning``.
    """

    k: float
    rounding: float
    conditioning: float
    samples: int


_BY_DTYPE = {
    np.dtype(jnp.bfloat16): Tolerance(norm=3e-2, elem=2e-1),
    np.dtype(jnp.float16): Tolerance(norm=5e-3, elem=5e-2),
    np.dtype(jnp.float32): Tolerance(norm=1e-5, elem=5e-3),
    np.dtype(jnp.float64): Tolerance(norm=1e-12, elem=1e-9),
}

# ---- the table: every constant of every rule, and why it has its value ---------------------------------------------

ERROR_MODEL = ErrorModel(
    # k = 2: manual may be twice as far from the truth as jax.grad. Measured on every built-in model x {bfloat16,
    # float16, float32} x 20 seeds (scripts/verdict_matrix.py): no correct row used more than 0.8 of the allowance.
    k=2.0,
    # rho = 2: two roundings of |truth| in the compared dtype (the truth itself must be stored in it to compare)
    rounding=2.0,
    # K = 64: set by the worst correct-but-cancelling backward measured, BatchNorm over a batch of 2 (29x jax.grad's
    # error in float32, 11x in float64), with a 2x margin
    conditioning=64.0,
    # 4 nearby points besides the given one: one sample of a random error can be small by chance; the largest counts
    samples=4,
)

FINITE_DIFFERENCE = Tolerance(norm=1e-6, elem=1e-4)  # float64 central differences, extrapolated: ~1e-8 when smooth
FINITE_DIFFERENCE_MODEL = ErrorModel(
    k=ERROR_MODEL.k, rounding=ERROR_MODEL.rounding,
    # K = 4: a finite difference's error estimate is a bound (truncation from two steps + measured rounding), not one
    # random sample of an error, so a small multiple of it suffices where the fixed tolerance is out of reach
    conditioning=4.0,
    # 4 points one float64 rounding step away measure the noise of the loss
    samples=4,
)
# a central estimate whose error exceeds this fraction of FINITE_DIFFERENCE.norm (relative) is retried with steps 10x,
# 100x, 1000x larger while its error estimate shrinks: a tiny directional derivative is rounding-dominated at h
FINITE_DIFFERENCE_REFINE = 0.1

# a float64 dot product <a, b> computed in a working precision of machine epsilon eps is off by up to DOT_ROUNDING eps
# <|a|, |b|>: 4 units of roundoff, gradcheck's allowance for <grad, v>; check_vjp adds it to a finite difference's
# estimated error (the analytic side's rounding) and to a Taylor remainder's floor
DOT_ROUNDING = 2.0


class TaylorTest(NamedTuple):
    """The constants of ``Rule.TAYLOR`` (``manualbp.verify.taylor``).

    Along a line x + h v, with a cotangent u, the remainder r(h) = |<u, f(x + h v) - f(x)> - h <J^T u, v>| is
    O(h^2) when J^T u is right and ~ h |error| when it is not. It is measured at steps ``h_max`` x 10^(-i /
    ``per_decade``) down to ``h_min`` (steps relative to the input's own scale), kept where it exceeds
    ``above_floor`` x its rounding floor, and its log-log slope fitted over the ``window`` smallest kept steps
    (where a first-order error dominates first). The row passes when the slope is at least ``pass_rate``; with
    fewer than ``window`` kept steps it is not compared (INCONCLUSIVE: rounding flattens the whole curve).
    """

    h_max: float
    h_min: float
    per_decade: int
    above_floor: float
    window: int
    pass_rate: float


TAYLOR = TaylorTest(
    # 0.1 of the input's own scale: the h^2 term is well above rounding there even where the function computes in
    # float32 inside (eps 1.2e-7), and a point outside the function's domain is only skipped (a non-finite value)
    h_max=1e-1,
    # at 1e-8 an O(1) curvature leaves h^2 = 1e-16 relative: float64's rounding; nothing below can be kept
    h_min=1e-8,
    # steps sqrt(10) apart: 15 evaluations over seven decades, three per fitting window
    per_decade=2,
    # a remainder 100x its rounding floor moves by at most 1%, and the fitted rate by < 0.01 (log10 1.02 / 1 decade)
    above_floor=100.0,
    # three steps = one decade: the narrowest span whose slope rounding cannot fake (see above_floor)
    window=3,
    # right: 2 (3 or more where the second-order term vanishes along v); wrong: 1 once h |error| dominates. A third-
    # order term of 10% of the second's at the window's largest step lowers a right rate by 0.1; 1.8 leaves it twice
    # that, and a wrong rule caught anywhere in the h^1 regime is below 1.5
    pass_rate=1.8,
)

TWIN_STEP_MODEL = ErrorModel(
    k=ERROR_MODEL.k, rounding=ERROR_MODEL.rounding,
    # K = 10: the twin's own-error figure is the largest of 6-7 samples (3 batch orders, 3 rounding neighbours and,
    # with x64 on, the float64 truth) of a whole leaf's normwise error; 1000-step GPT/GRU runs of correct code on
    # {1, 2, 4} devices used at most 4.0 of it (docs: the twin matrix), and a 1% wrong bias exceeds it at step 1
    conditioning=10.0,
    # three other orders of the same batch and three rounding neighbours of the parameters
    samples=3,
)


# float64 has no higher precision on the host: where float32 loses a quantity entirely (a saturated softmax), the
# reference's own error is measured against its jaxpr evaluated in 50+ digits (verify/highprec.py) when that takes at
# most this many entry operations per pass (a Python call each: ~2e5 run in ~10 s over the 3-4 passes it needs);
# above it the row is "not compared", never judged against an error estimate known to be too small
HIGH_PRECISION_BUDGET = 200_000


def tolerance(dtype) -> Tolerance:
    """The fixed manual-vs-autodiff tolerance for arrays of ``dtype``."""
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except TypeError:  # np.dtype's "data type 'banana' not understood"
        raise TypeError(f"tolerance: expected a dtype (float32, float64, bfloat16, float16), got {dtype!r}") from None
    except KeyError:
        raise TypeError(
            f"tolerance: no tolerance for dtype {np.dtype(dtype).name}; use a floating dtype"
        ) from None


# the rules a caller may ask a whole comparison to use (``verdict=``)
VERDICTS = (Rule.FIXED, Rule.CONDITIONING, Rule.ERROR_MODEL)


def default_verdict(dtype) -> Rule:
    """``Rule.ERROR_MODEL`` below float32 (no fixed tolerance separates rounding from a wrong rule), else CONDITIONING."""
    return Rule.ERROR_MODEL if np.dtype(dtype).itemsize < 4 else Rule.CONDITIONING


def resolve_verdict(verdict, dtype, where: str = "") -> Rule:
    """The ``Rule`` to judge ``dtype`` by: ``verdict`` itself, or the dtype's default for "auto"; ValueError if unusable
    (its message starts with ``where``, the function asked, when given)."""
    try:
        return _resolve_verdict(verdict, dtype)
    except ValueError as e:
        if not where:
            raise
        raise ValueError(f"{where}: {e}") from None


def _resolve_verdict(verdict, dtype) -> Rule:
    if verdict == "auto":
        return default_verdict(dtype)
    try:
        rule = Rule(verdict)
    except ValueError:
        rule = None
    if rule not in VERDICTS:
        raise ValueError(f"verdict must be 'auto' or one of {[str(v) for v in VERDICTS]}, got {verdict!r}")
    if rule is Rule.ERROR_MODEL and np.dtype(dtype) == np.dtype(np.float64):
        raise ValueError(
            "verdict 'error-model' needs a truth in a higher precision than the compared one, and float64 has none; "
            "use 'conditioning' (or 'auto') for float64"
        )
    return rule
