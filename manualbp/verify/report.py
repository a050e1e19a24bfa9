"""The comparison report: one row per layer per quantity, manual vs reference."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import jax
import numpy as np

from manualbp.verify.tolerances import Tolerance


@dataclass
class Row:
    """One quantity of one layer, manual vs reference.

    ``norm_rel`` = ||m - r|| / max(||m||, ||r||); ``max_rel`` = max |m - r| / |r|
    over entries with |r| > floor x max|r|; ``exact`` = bitwise equal.
    ``note`` explains a row that is not a plain comparison (e.g. "kink crossed").
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


def compare_arrays(layer: str, quantity: str, manual, ref, tol: Tolerance, note: str = "") -> Row:
    """A ``Row`` for one pair of arrays (compared in float64 on the host)."""
    m = np.asarray(manual, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if m.shape != r.shape:
        return Row(layer, quantity, tuple(r.shape), math.inf, math.inf, math.inf, False, False,
                   f"shape mismatch: manual {m.shape} vs reference {r.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        which = "manual" if not np.all(np.isfinite(m)) else "reference"
        return Row(layer, quantity, m.shape, math.nan, math.nan, math.nan, False, False,
                   f"non-finite values in {which} (exploding gradients?)")
    exact = bool(np.array_equal(m, r))
    if m.size == 0:
        return Row(layer, quantity, m.shape, 0.0, 0.0, 0.0, True, True, note)
    diff = np.abs(m - r)
    max_abs = float(diff.max())
    denom = max(float(np.linalg.norm(m)), float(np.linalg.norm(r)))
    norm_rel = float(np.linalg.norm(diff)) / denom if denom > 0 else 0.0
    big = np.abs(r) > tol.floor * np.abs(r).max()
    max_rel = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    ok = norm_rel <= tol.norm and max_rel <= tol.elem
    return Row(layer, quantity, m.shape, max_abs, max_rel, norm_rel, exact, ok, note)


def param_name(key_path) -> str:
    """'dW' for a params leaf at ['W'] (nested keys are joined: 'dcell.W')."""
    return "d" + ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def param_rows(label: str, manual, ref, tol: Tolerance) -> list[Row]:
    """One row per leaf of two gradient trees of one layer."""
    return [
        compare_arrays(label, param_name(kp), m, r, tol)
        for (kp, m), r in zip(jax.tree_util.tree_leaves_with_path(manual), jax.tree_util.tree_leaves(ref))
    ]


def _fmt(v: float) -> str:
    return f"{v:.2e}" if math.isfinite(v) else str(v)


def _json_float(v):
    return v if isinstance(v, bool) or not isinstance(v, float) or math.isfinite(v) else str(v)


@dataclass
class Report:
    """Rows of a comparison. ``ok`` iff every row passes; ``first_failure`` names the first that does not.

    ``timestep_norms`` maps a recurrent layer's label to ||dL/dh_t|| per step
    (manual), for plotting vanishing/exploding gradients through time.
    """

    title: str
    dtype: str
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    timestep_norms: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def first_failure(self) -> Row | None:
        return next((row for row in self.rows if not row.ok), None)

    def row(self, layer: str, quantity: str) -> Row:
        """The row for (layer, quantity); KeyError listing the rows otherwise."""
        for r in self.rows:
            if r.layer == layer and r.quantity == quantity:
                return r
        raise KeyError(f"no row ({layer!r}, {quantity!r}); rows: {[(r.layer, r.quantity) for r in self.rows]}")

    def summary(self) -> str:
        fail = self.first_failure
        n = len(self.rows)
        if fail is None:
            exact = sum(r.exact for r in self.rows)
            return f"PASS: all {n} rows within tolerance ({exact} bitwise equal)"
        nfail = sum(not r.ok for r in self.rows)
        why = fail.note or (
            f"norm rel {_fmt(fail.norm_rel)} (tol {self.tolerance.norm:.0e}), "
            f"max rel {_fmt(fail.max_rel)} (tol {self.tolerance.elem:.0e})"
        )
        return f"FAIL: {nfail} of {n} rows; first failing row: {fail.layer} {fail.quantity}: {why}"

    def __str__(self) -> str:
        head = ("layer", "quantity", "shape", "max|diff|", "max rel", "norm rel", "exact", "status")
        body = [
            (r.layer, r.quantity, "x".join(map(str, r.shape)) or "()", _fmt(r.max_abs), _fmt(r.max_rel),
             _fmt(r.norm_rel), "yes" if r.exact else "no", ("ok" if r.ok else "FAIL") + (f"  {r.note}" if r.note else ""))
            for r in self.rows
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        lines = [f"{self.title}  [{self.dtype}; tolerance: norm rel <= {self.tolerance.norm:.0e}, "
                 f"max rel <= {self.tolerance.elem:.0e}]"]
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
            "ok": self.ok,
            "dtype": self.dtype,
            "tolerance": self.tolerance._asdict(),
            "summary": self.summary(),
            "first_failure": None if fail is None else {"layer": fail.layer, "quantity": fail.quantity},
            "rows": [{k: _json_float(v) if not isinstance(v, tuple) else list(v) for k, v in asdict(r).items()}
                     for r in self.rows],
            "timestep_norms": {k: [_json_float(float(v)) for v in vals] for k, vals in self.timestep_norms.items()},
        }
