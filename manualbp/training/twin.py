"""Twin mode's verdict: manual vs reference parameters after every step of a lockstep run.

Twin mode runs the manual path (``manualbp`` backward) and the reference
path (``reference``: jax.grad) from identical parameters on identical
minibatches in the same step and records, per parameter and step, the max
absolute, max relative and normwise relative difference between the two
models' parameters (the definitions of ``manualbp.verify.report.Row``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.verify.tolerances import Tolerance


def parameter_differences(pm, pr, tol: Tolerance):
    """Per leaf: (max |m - r|, max |m - r|/|r| over |r| > floor max|r|, ||m - r|| / max(||m||, ||r||))."""
    rows = []
    for m, r in zip(jax.tree_util.tree_leaves(pm), jax.tree_util.tree_leaves(pr), strict=True):
        diff, absr = jnp.abs(m - r), jnp.abs(r)
        big = absr > tol.floor * jnp.max(absr)
        max_rel = jnp.max(jnp.where(big, diff / jnp.where(big, absr, 1), 0))
        denom = jnp.maximum(jnp.linalg.norm(m), jnp.linalg.norm(r))
        norm_rel = jnp.where(denom > 0, jnp.linalg.norm(diff) / jnp.where(denom > 0, denom, 1), 0)
        rows.append(jnp.stack([jnp.max(diff), max_rel, norm_rel]))
    return jnp.stack(rows)  # (n_params, 3)



@dataclass
class Divergence:
    """Manual vs reference parameters after every step of a twin run.

    ``max_abs``, ``max_rel``, ``norm_rel``: arrays (steps, n_params); row s
    is after step s + 1. ``first_exceed``: (step, parameter, max rel, norm
    rel) of the first parameter whose max rel exceeds ``tolerance.elem``, or
    None. Parameters are judged elementwise (the target "every parameter
    equal within 1e-9 relative" in float64); ``tolerance.norm`` was set for
    one gradient, not for rounding accumulated over many steps, so the
    normwise figure is recorded and shown but does not fail a twin run.
    """

    names: list
    max_abs: np.ndarray
    max_rel: np.ndarray
    norm_rel: np.ndarray
    dtype: str
    tolerance: Tolerance

    @property
    def first_exceed(self):
        bad = ~(self.max_rel <= self.tolerance.elem)  # NaN counts as exceeded
        if not bad.any():
            return None
        s, p = np.argwhere(bad)[0]
        return int(s) + 1, self.names[p], float(self.max_rel[s, p]), float(self.norm_rel[s, p])

    @property
    def ok(self) -> bool:
        return self.first_exceed is None

    def summary(self) -> str:
        n = self.max_rel.shape[0]
        if n == 0:
            return "twin: no steps taken"
        worst = int(np.argmax(self.max_rel[-1]))
        final = (f"after {n} steps the largest parameter difference is {self.names[worst]}: "
                 f"max rel {self.max_rel[-1, worst]:.2e}, max abs {self.max_abs[-1, worst]:.2e}")
        tol = f"[{self.dtype}; tolerance: max rel <= {self.tolerance.elem:.0e}]"
        first = self.first_exceed
        if first is None:
            return f"twin PASS: manual and reference parameters agree at every step; {final} {tol}"
        step, name, max_rel, norm_rel = first
        return (f"twin DIVERGED: first exceeded at step {step}, parameter {name} (max rel {max_rel:.2e}, "
                f"norm rel {norm_rel:.2e}); {final} {tol}")

    def to_dict(self) -> dict:
        first = self.first_exceed
        return {
            "ok": self.ok, "dtype": self.dtype, "steps": int(self.max_rel.shape[0]),
            "tolerance": {"max_rel": self.tolerance.elem},
            "first_exceed": None if first is None else
            {"step": first[0], "parameter": first[1], "max_rel": first[2], "norm_rel": first[3]},
            "final": {name: {"max_abs": float(self.max_abs[-1, i]), "max_rel": float(self.max_rel[-1, i]),
                             "norm_rel": float(self.norm_rel[-1, i])} for i, name in enumerate(self.names)}
            if self.max_rel.shape[0] else {},
        }

