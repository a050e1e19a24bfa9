"""The comparison report: one row per layer per quantity, manual vs reference, and the verdict over them.

``Report.status`` is "PASS" (every row passes and at least one was compared), "FAIL" (some row
fails) or "INCONCLUSIVE" (nothing failed, but no row could be compared: a PASS over zero
comparisons would claim what was never checked). ``ok`` is True only for "PASS".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from manualbp.verify.tolerances import ERROR_MODEL, ErrorModel, Tolerance
from manualbp.verify.verdict import Row, compare_arrays  # noqa: F401  (re-exported: the row and its fixed verdict)


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
    return {"conditioning": "ok (cond)", "error model": "ok (err model)"}.get(row.rule, "ok")


def _rule_text(verdict: str, tol: Tolerance, model: ErrorModel) -> str:
    fixed = f"norm rel <= {tol.norm:.0e}, max rel <= {tol.elem:.0e}"
    if verdict == "conditioning":
        return f"{fixed}, or within {model.conditioning:g}x jax.grad's own error where that exceeds {tol.norm:.0e}/" \
               f"{model.conditioning:g}"
    if verdict == "error-model":
        return f"manual's error vs float64 truth <= {model.k:g}x jax.grad's own + {model.rounding:g} eps |truth|"
    if verdict == "finite differences":
        return f"{fixed}, or within {model.conditioning:g}x the finite difference's estimated error"
    return fixed


@dataclass
class Report:
    """Rows of a comparison, their ``status`` ("PASS" | "FAIL" | "INCONCLUSIVE") and the first failure.

    ``verdict`` names how rows were judged ("fixed", "conditioning", "error-model"; gradcheck:
    "finite differences"), ``error_model`` the constants it used. ``timestep_norms`` maps a recurrent layer's label to ||dL/dh_t|| per
    step (manual), for plotting vanishing/exploding gradients through time.
    """

    title: str
    dtype: str
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    timestep_norms: dict = field(default_factory=dict)
    verdict: str = "fixed"
    error_model: ErrorModel = ERROR_MODEL

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
        if row.rule == "error model":
            return (f"manual's error {_fmt(row.err_manual)} vs jax.grad's {_fmt(row.err_ref)} "
                    f"(allowed {self.error_model.k:g}x + rounding)")
        if row.rule == "conditioning":
            return (f"norm rel {_fmt(row.norm_rel)}, more than {self.error_model.conditioning:g}x jax.grad's own error "
                    f"{_fmt(row.err_ref)}")
        if row.rule == "finite difference":
            return (f"norm rel {_fmt(row.norm_rel)} (tol {self.tolerance.norm:.0e}), more than "
                    f"{self.error_model.conditioning:g}x the estimated error {_fmt(row.err_ref)}"
                    + (f"; {row.note}" if row.note else ""))
        if row.rule == "fixed":
            truth = ("" if row.err_manual is None else
                     f"; vs the high-precision truth: manual {_fmt(row.err_manual)}, jax.grad {_fmt(row.err_ref)}")
            return (f"norm rel {_fmt(row.norm_rel)} (tol {self.tolerance.norm:.0e}), "
                    f"max rel {_fmt(row.max_rel)} (tol {self.tolerance.elem:.0e}){truth}")
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
            cond = sum(r.rule == "conditioning" for r in compared)
            if cond:
                text += f"; {cond} ill-conditioned, within {self.error_model.conditioning:g}x jax.grad's own error"
            return text + (f"; {not_compared}" if not_compared else "")
        fail = self.first_failure
        nfail = sum(not r.ok for r in compared)
        return f"FAIL: {nfail} of {n} rows; first failing row: {fail.layer} {fail.quantity}: {self._why(fail)}"

    def _skip_reasons(self) -> str:
        reasons = sorted({r.note.split(":")[0] or "not compared" for r in self.rows if not r.compared})
        return ", ".join(reasons)

    def __str__(self) -> str:
        errs = any(r.err_ref is not None for r in self.rows)
        head = ("layer", "quantity", "shape", "max|diff|", "max rel", "norm rel",
                *(("manual err", "ref err") if errs else ()), "exact", "status")
        body = [
            (r.layer, r.quantity, "x".join(map(str, r.shape)) or "()", _fmt(r.max_abs), _fmt(r.max_rel), _fmt(r.norm_rel),
             *((_fmt(r.err_manual), _fmt(r.err_ref)) if errs else ()),
             "yes" if r.exact else "no", _status(r) + (f"  {r.note}" if r.note else ""))
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        lines = [f"{self.title}  [{self.dtype}; {self.verdict}: {_rule_text(self.verdict, self.tolerance, self.error_model)}]"]
        for i, cells in enumerate([head, *body]):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(self.summary())
        return "\n".join(lines)

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
            "first_failure": None if fail is None else {"layer": fail.layer, "quantity": fail.quantity},
            "rows": [{k: _json_float(v) if not isinstance(v, tuple) else list(v) for k, v in asdict(r).items()}
                     for r in self.rows],
            "timestep_norms": {k: [_json_float(float(v)) for v in vals] for k, vals in self.timestep_norms.items()},
        }
