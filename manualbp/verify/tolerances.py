"""Tolerances and verdict constants: the one place a test, a report or a verdict gets a threshold.

Fixed tolerances (``tolerance(dtype)``), manual vs jax.grad in the same precision. On a
prototype of the MLP, CNN and RNN (5 seeds) float32 agreed to normwise relative error <= 5e-7
and elementwise relative error <= 3e-4 on entries above 1e-3 x max|ref|; float64 to <= 1e-14
normwise. The thresholds keep a 10-20x margin over those figures. They are right for
well-conditioned rows in float32 and float64, and wrong in two places, which the verdicts of
``ErrorModel`` handle (``manualbp.verify.verdict``):

* low precision (bfloat16, float16): rounding errors of a few percent are normal, and no fixed
  number separates them from a wrong rule; the verdict compares manual's error against a
  float64 truth with jax.grad's own error against it ("error-model");
* ill-conditioned rows in float32/float64 (an exactly-zero gradient that both sides compute as
  rounding noise, a gradient that is a small difference of large terms): there the verdict
  allows a multiple of jax.grad's own rounding error, measured ("conditioning").

Finite differences (``FINITE_DIFFERENCE``) carry their own error estimate (truncation from two
step sizes, rounding from the noise of the loss): see ``manualbp.verify.gradcheck``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Tolerance(NamedTuple):
    """Pass when normwise <= ``norm`` and elementwise <= ``elem``.

    ``elem`` applies to entries whose reference magnitude exceeds
    ``floor`` x max|ref| (relative error of near-zero entries measures noise).
    """

    norm: float
    elem: float
    floor: float = 1e-3


class ErrorModel(NamedTuple):
    """The constants of the verdicts that measure jax.grad's own error (``manualbp.verify.verdict``).

    error model (FlashAttention's test criterion: Dao et al., tests/test_flash_attn.py): with a
    float64 truth t of the same quantity at the same point, manual m and jax.grad's r pass when

    .. math::
        \\|m - t\\| \\le k \\|r - t\\| + \\rho\\, \\epsilon \\|t\\| \\quad\\text{and}\\quad
        \\max|m - t| \\le k \\max|r - t| + \\rho\\, \\epsilon \\max|t|,

    epsilon the dtype's machine epsilon (``jnp.finfo(dtype).eps``). Measured on every built-in
    model x {bfloat16, float16, float32} x 20 seeds (``scripts/verdict_matrix.py``): no correct
    row used more than 0.8 of this allowance.

    conditioning: a row whose fixed tolerance cannot hold because jax.grad itself is off by more
    than ``tol.norm / K`` (relative) passes when ||m - r|| <= K ||r - t|| and
    max|m - r| <= K max|r - t|. ``K`` is set by the worst correct-but-cancelling backward
    measured (BatchNorm over a batch of 2: 29x jax.grad's error in float32, 11x in float64).

    samples: jax.grad's error is sampled at this many points besides the given one (each
    float input and parameter moved by one rounding step, each compared with the truth at the
    moved point), and the largest is used: one sample of a random error can be small by chance.
    """

    k: float = 2.0
    rounding: float = 2.0
    conditioning: float = 64.0
    samples: int = 4


ERROR_MODEL = ErrorModel()

_BY_DTYPE = {
    np.dtype(jnp.bfloat16): Tolerance(norm=3e-2, elem=2e-1),
    np.dtype(jnp.float16): Tolerance(norm=5e-3, elem=5e-2),
    np.dtype(jnp.float32): Tolerance(norm=1e-5, elem=5e-3),
    np.dtype(jnp.float64): Tolerance(norm=1e-12, elem=1e-9),
}

FINITE_DIFFERENCE = Tolerance(norm=1e-6, elem=1e-4)
# a finite difference's error estimate is a bound (truncation from two steps + measured rounding), not one random
# sample: a row of gradcheck passes within this multiple of it where the fixed tolerance is out of reach
FINITE_DIFFERENCE_MODEL = ErrorModel(conditioning=4.0)

# how a row is judged: "fixed" tolerances only; "conditioning": fixed, or within K x jax.grad's own
# error where that error makes the fixed tolerance unreachable; "error-model": manual's error vs a
# float64 truth against k x jax.grad's own (needs a precision above the compared one: not float64)
VERDICTS = ("fixed", "conditioning", "error-model")


def tolerance(dtype) -> Tolerance:
    """The manual-vs-autodiff tolerance for arrays of ``dtype``."""
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise TypeError(
            f"tolerance: no tolerance for dtype {np.dtype(dtype).name}; use a floating dtype"
        ) from None


def default_verdict(dtype) -> str:
    """"error-model" below float32 (no fixed tolerance separates rounding from a wrong rule), else "conditioning"."""
    return "error-model" if np.dtype(dtype).itemsize < 4 else "conditioning"


def resolve_verdict(verdict: str, dtype) -> str:
    """The verdict to use for ``dtype``: ``verdict`` itself, or the dtype's default for "auto"; ValueError if unusable."""
    if verdict == "auto":
        return default_verdict(dtype)
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be 'auto' or one of {list(VERDICTS)}, got {verdict!r}")
    if verdict == "error-model" and np.dtype(dtype) == np.dtype(np.float64):
        raise ValueError(
            "verdict 'error-model' needs a truth in a higher precision than the compared one, and float64 has none; "
            "use 'conditioning' (or 'auto') for float64"
        )
    return verdict
