"""The one builder of check_vjp's compared rows, on ``verdict.judge`` (the rows of ``compare``)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from manualbp.verify.tolerances import Rule, Tolerance
from manualbp.verify.verdict import NOT_COMPUTED, Row, judge, structure_row


def row(name: str, quantity: str, got, want, tol: Tolerance, *, verdict: Rule = Rule.FIXED, truth=None,
         exact: float | None = None, shape=None, why: str = "", note: str = "", failed: str = "",
         errors=()) -> Row:
    """Every compared row of a check_vjp report is built here, on ``verdict.judge`` (the rows of ``compare``).

    ``verdict`` and ``truth`` (the reference in a higher precision at the same
    point) go to ``judge``: the error model compares fn's and the reference's
    errors against the truth; ``errors``: other samples of the reference's own error. ``exact``: judge by
    ``Rule.EXACT``, max |got - want| <= exact instead (0: bitwise equal; reentrancy), ``why`` says what a failure
    means. ``shape``: the shape shown (the input's, for a stack of k cotangents). ``note``: shown on the row
    whatever its verdict. ``failed``: the quantity could not be computed (the reason): a failing structure row.
    """
    if failed:
        return structure_row(name, quantity, NOT_COMPUTED, failed, shape)
    if exact is not None:
        judged = judge(name, quantity, got, want, tol, rule=Rule.EXACT, allowed=exact, note=note, why=why,
                       manual_name="fn")
    else:
        eps = float(jnp.finfo(np.asarray(want).dtype).eps) if truth is not None else None
        judged = judge(name, quantity, got, want, tol, rule=verdict, truth=truth, eps=eps, note=note, errors=errors,
                       why=why, manual_name="fn")
    return judged if shape is None else dataclasses.replace(judged, shape=tuple(shape))
