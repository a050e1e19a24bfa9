"""The comparison report: one row per layer per quantity, manual vs reference, and the verdict over them.

``Report.status`` is "PASS" (every row passes and at least one was compared), "FAIL" (some row
fails) or "INCONCLUSIVE" (nothing failed, but no row could be compared: a PASS over zero
comparisons would claim what was never checked). ``ok`` is True only for "PASS".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from manualbp.verify.tolerances import ERROR_MODEL, ErrorModel, Rule, Tolerance
from manualbp.verify.verdict import Row

__all__ = ["Report", "Row"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}" if math.isfinite(v) else str(v)


def _json_float(v):
    return v if isinstance(v, bool) or not isinstance(v, float) or math.isfinite(v) else str(v)


def _status(row: Row) -> str:
    if not row.compared:
        return "--"
    if not row.ok:
        return "FAIL"
    return {Rule.CONDITIONING: "ok (cond)", Rule.ERROR_MODEL: "ok (err model)", Rule.ONE_SIDED: "ok (one-sided)",
            Rule.SUBGRADIENT: "ok (subgradient)", Rule.TAYLOR: "ok (taylor)"}.get(row.rule, "ok")


def _only_near_zero(row: Row) -> bool:
    """A row whose sides differ only on entries where the reference is (near) zero: no entry has a relative error."""
    return row.max_rel == 0 and row.norm_rel > 0


def rule_text(rule: Rule, tol: Tolerance, model: ErrorModel, reference: str = "jax.grad") -> str:
    """What a report's rule allows, in words (the header of the table)."""
    fixed = f"norm rel <= {tol.norm:.0e}, max rel <= {tol.elem:.0e}" + (f", + atol {tol.atol:.0e}" if tol.atol else "")
    if rule is Rule.CONDITIONING:
        return f"{fixed}, or within {model.conditioning:g}x {reference}'s own error where that exceeds " \
               f"{tol.norm:.0e}/{model.conditioning:g}"
    if rule is Rule.ERROR_MODEL:
        return f"error vs float64 truth <= {model.k:g}x {reference}'s own + {model.rounding:g} eps |truth|"
    if rule is Rule.FINITE_DIFFERENCE:
        return f"{fixed}, or within {model.conditioning:g}x the finite difference's estimated error"
    return fixed


@dataclass
class Report:
    """Rows of a comparison, their ``status`` ("PASS" | "FAIL" | "INCONCLUSIVE") and the first failure.

    ``verdict`` is the ``Rule`` rows were judged by (``FIXED``, ``CONDITIONING``, ``ERROR_MODEL``;
    gradcheck: ``FINITE_DIFFERENCE``), ``error_model`` the constants it used; ``reference`` and ``manual`` how the
    header and messages name the reference side and the side under test ("jax.grad" and "manual" for a model;
    check_vjp: the reference's name and "fn"), ``subject`` what the first column names (a "layer", a
    "function"). ``timestep_norms`` maps a recurrent layer's label to ||dL/dh_t|| per
    step (manual), for plotting vanishing/exploding gradients through time.
    """

    title: str
    dtype: str
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    timestep_norms: dict = field(default_factory=dict)
    verdict: Rule = Rule.FIXED
    error_model: ErrorModel = ERROR_MODEL
    reference: str = "jax.grad"
    manual: str = "manual"
    subject: str = "layer"
    diagnoser: Callable | None = field(default=None, repr=False, compare=False)

    def set_diagnoser(self, diagnoser: Callable) -> None:
        """``diagnoser(i) -> Diagnosis`` for failing row i; the first failure is diagnosed now, the rest on
        ``diagnose()`` (a report that passes costs nothing, one that fails one diagnosis)."""
        self.diagnoser = diagnoser
        fail = self.first_failure
        if fail is not None and fail.diagnosis is None:
            fail.diagnosis = diagnoser(self.rows.index(fail))

    def diagnose(self) -> list:
        """The diagnosis of every failing row, in row order (``manualbp.verify.forensics.Diagnosis``)."""
        out = []
        for i, row in enumerate(self.rows):
            if row.compared and not row.ok:
                if row.diagnosis is None and self.diagnoser is not None:
                    row.diagnosis = self.diagnoser(i)
                if row.diagnosis is not None:
                    out.append(row.diagnosis)
        return out

    def raise_if_failed(self) -> Report:
        """Raise ``AssertionError`` (the report's table as its message) unless the status is PASS; return the report.

        An INCONCLUSIVE report raises too: a check that compared nothing has not passed. One line in a test::

            mbp.check_vjp(my_rule, None, x).raise_if_failed()
        """
        if not self.ok:
            raise AssertionError(f"{self.status}: {self.title}\n{self}")
        return self

    @property
    def status(self) -> str:
        if any(not r.ok for r in self.rows if r.compared):
            return "FAIL"
        return "PASS" if any(r.compared for r in self.rows) else "INCONCLUSIVE"

    @property
    def ok(self) -> bool:
        return self.status == "PASS"

    @property
    def first_failure(self) -> Row | None:
        return next((row for row in self.rows if row.compared and not row.ok), None)

    def row(self, layer: str, quantity: str) -> Row:
        """The row for (layer, quantity); KeyError listing the rows otherwise."""
        for r in self.rows:
            if r.layer == layer and r.quantity == quantity:
                return r
        raise KeyError(f"no row ({layer!r}, {quantity!r}); rows: {[(r.layer, r.quantity) for r in self.rows]}")

    def _why(self, row: Row) -> str:
        if row.note and not math.isfinite(row.norm_rel):
            return row.note
        if row.rule is Rule.TAYLOR:
            return row.note
        if row.rule is Rule.ERROR_MODEL:
            return (f"{self.manual}'s error {_fmt(row.err_manual)} vs {self.reference}'s {_fmt(row.err_ref)} "
                    f"(allowed {self.error_model.k:g}x + rounding)")
        if row.rule is Rule.CONDITIONING:
            return (f"norm rel {_fmt(row.norm_rel)}, more than the {_fmt(row.allowed)} allowed (a multiple of the "
                    f"measured rounding error {_fmt(row.err_ref)})" + (f"; {row.note}" if row.note else ""))
        tol = row.tolerance or self.tolerance
        if row.rule in (Rule.FINITE_DIFFERENCE, Rule.ONE_SIDED, Rule.SUBGRADIENT):
            return (f"norm rel {_fmt(row.norm_rel)} (tol {tol.norm:.0e}), more than "
                    f"{self.error_model.conditioning:g}x the estimated error {_fmt(row.err_ref)}"
                    + (f"; {row.note}" if row.note else ""))
        if row.rule is Rule.EXACT:
            return f"max|diff| {_fmt(row.max_abs)}" + (f"; {row.note}" if row.note else "")
        if row.rule is Rule.FIXED:
            truth = ("" if row.err_manual is None else f"; vs the high-precision truth: {self.manual} "
                     f"{_fmt(row.err_manual)}, {self.reference} {_fmt(row.err_ref)}")
            elem = (f"max rel {_fmt(row.max_rel)} (tol {tol.elem:.0e})" if not _only_near_zero(row) else
                    "no entry has a relative error: they differ only where the reference is (near) zero")
            return f"norm rel {_fmt(row.norm_rel)} (tol {tol.norm:.0e}), {elem}{truth}"
        return row.note or row.rule

    def summary(self) -> str:
        n = len(self.rows)
        compared = [r for r in self.rows if r.compared]
        skipped = n - len(compared)
        not_compared = f"{skipped} not compared ({self._skip_reasons()})" if skipped else ""
        status = self.status
        if status == "INCONCLUSIVE":
            return f"INCONCLUSIVE: 0 of {n} rows compared; {not_compared or 'no rows'}"
        if status == "PASS":
            exact = sum(r.exact for r in compared)
            text = f"PASS: all {len(compared)} compared rows within tolerance ({exact} bitwise equal)"
            cond = sum(r.rule is Rule.CONDITIONING for r in compared)
            if cond:
                text += f"; {cond} ill-conditioned, within a multiple of the rounding error measured for them"
            return text + (f"; {not_compared}" if not_compared else "")
        fail = self.first_failure
        nfail = sum(not r.ok for r in compared)
        diagnosis = "" if fail.diagnosis is None or fail.rule is Rule.STRUCTURE else f"; diagnosis: {fail.diagnosis}"
        return (f"FAIL: {nfail} of {n} rows; first failing row: {fail.layer} {fail.quantity}: {self._why(fail)}"
                f"{diagnosis}")

    def _skip_reasons(self) -> str:
        reasons = sorted({r.note.split(":")[0] or "not compared" for r in self.rows if not r.compared})
        return ", ".join(reasons)

    def __str__(self) -> str:
        errs = any(r.err_ref is not None for r in self.rows)
        head = (self.subject, "quantity", "shape", "max|diff|", "max rel", "norm rel",
                *((f"{self.manual} err", "ref err") if errs else ()), "exact", "status")
        fmt = lambda r, v: _fmt(v) if r.compared else "-"  # noqa: E731  (a row not compared has no figures)
        body = [
            (r.layer, r.quantity, "x".join(map(str, r.shape)) or "()", fmt(r, r.max_abs),
             "ref~0" if not r.ok and _only_near_zero(r) else fmt(r, r.max_rel), fmt(r, r.norm_rel),
             *((_fmt(r.err_manual), _fmt(r.err_ref)) if errs else ()),
             "yes" if r.exact else "no", _status(r) + (f"  {r.note}" if r.note else ""))
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        rule = rule_text(self.verdict, self.tolerance, self.error_model, self.reference)
        lines = [f"{self.title}  [{self.dtype}; {self.verdict}: {rule}]"]
        fail = self.first_failure
        for i, cells in enumerate([head, *body]):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
            elif self.rows[i - 1] is fail and fail.diagnosis is not None and fail.rule is not Rule.STRUCTURE:
                lines.append(f"  ^ diagnosis: {fail.diagnosis}")
        lines.append(self.summary())
        return "\n".join(lines)

    @staticmethod
    def _row_dict(r: Row) -> dict:
        out = {k: _json_float(v) if not isinstance(v, tuple) else list(v) for k, v in asdict(r).items()
               if k not in ("diagnosis", "tolerance")}
        out["tolerance"] = None if r.tolerance is None else r.tolerance._asdict()
        out["diagnosis"] = None if r.diagnosis is None else r.diagnosis.to_dict()
        return out

    def to_dict(self) -> dict:
        """JSON-ready (non-finite floats become strings)."""
        fail = self.first_failure
        return {
            "title": self.title,
            "status": self.status,
            "ok": self.ok,
            "dtype": self.dtype,
            "verdict": self.verdict,
            "tolerance": self.tolerance._asdict(),
            "error_model": self.error_model._asdict(),
            "summary": self.summary(),
            "rows_compared": sum(r.compared for r in self.rows),
            "first_failure": None if fail is None else {
                "layer": fail.layer, "quantity": fail.quantity,
                "diagnosis": None if fail.diagnosis is None else fail.diagnosis.to_dict()},
            "rows": [self._row_dict(r) for r in self.rows],
            "timestep_norms": {k: [_json_float(float(v)) for v in vals] for k, vals in self.timestep_norms.items()},
        }
