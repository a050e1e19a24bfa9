"""Twin mode's figures (on the device, every step) and its verdict (on the host, at the end).

A twin run trains the manual path and the reference path (jax.grad) from
the same parameters on the same batches. Their trajectories drift apart by
rounding that training amplifies (chaos: a float32 run on 4 devices whose
all-reduce sums in another order drifts past any fixed tolerance in a few
hundred steps), so the verdict never compares the two trajectories. It
compares, at every step, the manual gradient with the reference gradient
at the manual path's OWN parameters and batch: two ways of computing the
same numbers, which differ only by the rounding of one step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualbp.verify.rounding import batch_orders, rounding_neighbour, widen
from manualbp.verify.tolerances import TWIN_STEP_MODEL, Rule, Tolerance, tolerance
from manualbp.verify.verdict import within_own_error


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _relative(sa, sb, sd, bad):
    """||a - b|| / max(||a||, ||b||) from the sums of squares; 0 when both are 0; NaN where ``bad`` (non-finite entries)."""
    denom = jnp.sqrt(jnp.maximum(sa, sb))
    rel = jnp.where(denom > 0, jnp.sqrt(sd) / jnp.where(denom > 0, denom, 1), 0)
    return jnp.where(bad == 0, rel, jnp.nan)


def leaf_sums(*pairs):
    """Per parameter leaf and per pair (a, b) of trees shaped alike: (n_leaves, len(pairs), 5) sums
    [||a||^2, ||b||^2, ||a - b||^2, non-finite entries of a, of b], in at least float32.

    One reduction per leaf for all the pairs (a GPT's twin step has ~40 leaves): a reduction per leaf,
    pair and quantity made ~600 small programs for XLA to compile, 4 of the step's 6.6 s of compiling.
    """
    rows = []
    for leaves in zip(*(_leaves(tree) for pair in pairs for tree in pair), strict=True):
        t = functools.reduce(jnp.promote_types, [a.dtype for a in leaves], jnp.float32)
        per_pair = []
        for a, b in zip(leaves[::2], leaves[1::2], strict=True):
            a, b = a.astype(t).reshape(-1), b.astype(t).reshape(-1)
            per_pair += [a * a, b * b, jnp.square(a - b), (~jnp.isfinite(a)).astype(t), (~jnp.isfinite(b)).astype(t)]
        rows.append(jnp.sum(jnp.stack(per_pair), axis=1).reshape(len(pairs), 5))
    return jnp.stack(rows)


def normwise(sums):
    """(..., 5) sums of ``leaf_sums`` -> normwise relative difference (NaN where a or b holds a NaN or an Inf)."""
    return _relative(sums[..., 0], sums[..., 1], sums[..., 2], sums[..., 3] + sums[..., 4]).astype(jnp.float32)


def measures_own_error(dtype) -> bool:
    """Whether a twin step in ``dtype`` also measures the reference's error against float64 (``jax_enable_x64`` on)."""
    return bool(jax.config.read("jax_enable_x64")) and jnp.finfo(dtype).bits < 64


def _relative_scalar(a, b):
    """|a - b| / max(|a|, |b|), 0 when both are 0 (an exact fit: both losses 0); NaN where either is non-finite."""
    denom = jnp.maximum(jnp.abs(a), jnp.abs(b))
    rel = jnp.where(denom > 0, jnp.abs(a - b) / jnp.where(denom > 0, denom, 1), 0)
    return jnp.where(jnp.isfinite(a) & jnp.isfinite(b), rel, jnp.nan)


def twin_figures(manual, reference_at, params, x, y, updates_ref, params_manual, params_reference) -> dict:
    """One twin step's figures, each an array over the parameter leaves (``loss``: a scalar).

    Args:
      manual: (loss, grads, updates) of the manual path at its parameters.
      reference_at: ``(params, x, y) -> (loss, grads)``, the reference gradient.
      params: the manual path's parameters before the step (where both gradients are taken).
      x, y: the step's batch (every array with the batch as its leading axis).
      updates_ref: the reference optimizer applied to the manual gradient from the same state.
      params_manual, params_reference: the two paths' parameters after the step.

    Returns:
      "grad": normwise relative difference per leaf, manual vs reference gradient;
      "grad_noise": where any leaf's "grad" exceeds ``tolerance(dtype).norm`` (and only there: a
      ``lax.cond``, so a clean step pays nothing), the largest normwise difference, per leaf, between
      the reference gradient and the reference gradient of the same batch in three other orders, or
      at the parameters moved by one rounding unit (x (1 +- eps), three random signs): what rounding
      alone, in the sums or in the forward pass, moves that leaf by; and, in float32 and narrower
      with ``jax_enable_x64`` on, between the reference gradient and the reference evaluated in
      float64 at the same point (its own error); 0 elsewhere;
      "loss": |loss_m - loss_r| / max(|loss_m|, |loss_r|) (0 when both are 0); "update": normwise difference per leaf of the manual
      optimizer's update and the reference optimizer's update of the same manual gradient;
      "drift": normwise difference per leaf of the two trajectories' parameters (shown, not judged);
      "finite": (2, n_leaves), whether every parameter of the manual / reference path is finite.
    """
    loss_m, grads_m, updates_m = manual
    loss_x, grads_x = reference_at(params, x, y)
    n = len(_leaves(grads_m))
    sums = leaf_sums((grads_m, grads_x), (updates_m, updates_ref), (params_manual, params_reference))
    grad = normwise(sums[:, 0])

    dtype = _leaves(grads_m)[0].dtype

    def spread():
        # six more reference gradients, run one after another by lax.map: one copy of the reference's
        # forward and backward in the compiled step, not six (the twin step of the GPT compiled in 38 s)
        batch = x.shape[0] if hasattr(x, "shape") else _leaves(x)[0].shape[0]
        n = TWIN_STEP_MODEL.samples
        points = [(params, *jax.tree_util.tree_map(lambda a, o=order: a[o], (x, y))) for order in batch_orders(batch, n)]
        points += [(rounding_neighbour(params, i), x, y) for i in range(n)]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *points)
        spreads = lax.map(lambda point: normwise(leaf_sums((grads_x, reference_at(*point)[1]))[:, 0]), stacked)
        noise = jnp.max(spreads, axis=0)
        if not measures_own_error(dtype):
            return noise
        # the reference's own error: its gradient against the same reference evaluated in float64 at the same point
        # (what compare's conditioning verdict measures); the spread alone misses rounding that every neighbour
        # repeats (a softmax probability near 1 rounds to the same float at every neighbour)
        truth = reference_at(*widen((params, x, y)))[1]
        return jnp.maximum(noise, normwise(leaf_sums((grads_x, truth))[:, 0]))

    need = ~jnp.all(grad <= tolerance(dtype).norm)
    return {
        "grad": grad,
        "grad_noise": lax.cond(need, spread, lambda: jnp.zeros((n,), jnp.float32)),
        "loss": _relative_scalar(loss_m, loss_x).astype(jnp.float32),
        "update": normwise(sums[:, 1]),
        "drift": normwise(sums[:, 2]),
        "finite": (sums[:, 2, 3:] == 0).T,  # (2, n): no non-finite entry in the manual / reference parameters
    }


@dataclass
class Divergence:
    """Twin mode's verdict, step by step, from the figures ``twin_figures`` recorded.

    Arrays have one row per step (row s is step s + 1) and, but ``loss``,
    one column per parameter leaf. A step fails when

    - any manual or reference parameter or loss is non-finite;
    - the manual gradient of a leaf differs from the reference gradient at
      the same parameters by more than ``tolerance.norm`` (normwise) AND by
      more than ``noise_factor`` times the reference's own rounding
      (``Rule.TWIN_STEP``: ``verdict.within_own_error`` with
      ``tolerances.TWIN_STEP_MODEL.conditioning``): its
      spread over three other orders of the same batch and three rounding
      neighbours of the parameters, and (float32 and narrower, with
      ``jax_enable_x64`` on) its distance from the reference evaluated in
      float64 at the same point (an ill-conditioned leaf, e.g. a bias whose
      gradient is a small sum of larger terms, an LSTM's weights through a
      long sequence, or a GPT late in training, rounds that much whoever
      computes it);
    - the manual loss differs from the reference loss by more than
      ``tolerance.norm`` times the larger of the loss and the run's first
      loss (a loss near 0 is a difference of nearly equal terms);
    - the manual optimizer's update of the manual gradient differs from the
      reference optimizer's update of it by more than ``tolerance.norm``.

    ``drift`` (the two trajectories' parameters apart) is recorded and
    plotted, never judged: training amplifies rounding like any perturbation.
    """

    names: list
    grad: np.ndarray
    grad_noise: np.ndarray
    loss: np.ndarray
    update: np.ndarray
    drift: np.ndarray
    finite: np.ndarray  # (steps, 2, n_leaves): manual, reference parameters finite
    losses: np.ndarray  # (steps, 2): manual, reference training loss
    dtype: str
    tolerance: Tolerance
    noise_factor: float = TWIN_STEP_MODEL.conditioning
    diagnosis: object = None  # what the first diverging gradient is (``twin_diagnosis``), set by ``train_twin``
    rule = Rule.TWIN_STEP

    @classmethod
    def from_history(cls, names, history: dict, dtype: str) -> Divergence:
        f = {k.split("/", 1)[1]: np.asarray(v) for k, v in history.items() if k.startswith("twin/")}
        losses = np.stack([history["manual/loss"], history["reference/loss"]], axis=-1)
        return cls(list(names), f["grad"], f["grad_noise"], f["loss"], f["update"], f["drift"],
                   f["finite"], losses, dtype, tolerance(dtype))

    @property
    def steps(self) -> int:
        return int(self.grad.shape[0])

    def _failures(self):
        tol, k = self.tolerance, self.noise_factor
        nonfinite = ~np.isfinite(self.losses).all(axis=1) | ~self.finite.reshape(self.steps, -1).all(axis=1)
        grad = ~within_own_error(self.grad, self.grad_noise, tol.norm, k)
        # |loss_m - loss_r| <= tol x max(|loss_m|, |loss_r|, |first loss|): a loss near 0 is a difference of nearly
        # equal terms, judged against the scale the run started at ("loss" is relative to max(|loss_m|, |loss_r|))
        first = np.abs(self.losses[:1, 0]) if self.steps else 0
        scale = np.max(np.abs(self.losses), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            allowed = tol.norm * np.where(scale > 0, np.maximum(1, first / scale), 1)
        loss = ~(self.loss <= allowed)
        update = ~(self.update <= tol.norm)
        return nonfinite, grad, loss, update

    @property
    def first_failure(self) -> dict | None:
        """{"step", "kind" (non-finite | gradient | loss | update), "parameter", ...} of the first failing step."""
        nonfinite, grad, loss, update = self._failures()
        bad = nonfinite | grad.any(axis=1) | loss | update.any(axis=1)
        if not bad.any():
            return None
        s = int(np.argmax(bad))
        out = {"step": s + 1}
        if nonfinite[s]:
            paths = ("manual", "reference")
            what = [f"{paths[i]} loss" for i in range(2) if not np.isfinite(self.losses[s, i])]
            what += [f"{paths[i]} {self.names[j]}" for i, j in np.argwhere(~self.finite[s])]
            return {**out, "kind": "non-finite", "parameter": ", ".join(what[:3]) + (" ..." if len(what) > 3 else "")}
        if grad[s].any():
            i = int(np.argmax(grad[s]))
            return {**out, "kind": "gradient", "parameter": self.names[i], "error": float(self.grad[s, i]),
                    "noise": float(self.grad_noise[s, i])}
        if loss[s]:
            return {**out, "kind": "loss", "parameter": None, "error": float(self.loss[s])}
        i = int(np.argmax(update[s]))
        return {**out, "kind": "update", "parameter": self.names[i], "error": float(self.update[s, i])}

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def worst(self) -> dict:
        """The largest gradient difference of the run (step, parameter, error, noise) and the final drift."""
        if self.steps == 0:
            return {}
        s, i = np.unravel_index(np.nanargmax(np.where(np.isfinite(self.grad), self.grad, -1)), self.grad.shape)
        return {"step": int(s) + 1, "parameter": self.names[i], "error": float(self.grad[s, i]),
                "noise": float(self.grad_noise[s, i]), "fallback_steps": int((self.grad_noise.max(axis=1) > 0).sum()),
                "drift": float(np.max(self.drift[-1]))}

    def summary(self) -> str:
        if self.steps == 0:
            return "twin: no steps taken"
        tol = f"[{self.dtype}; tolerance {self.tolerance.norm:.0e} normwise, or {self.noise_factor:g}x the " \
              "reference's own rounding]"
        first = self.first_failure
        if first is not None:
            s = first["step"]
            if first["kind"] == "non-finite":
                return f"twin DIVERGED: non-finite at step {s}, {first['parameter']} (the run blew up) {tol}"
            what = {"gradient": f"the manual gradient of {first['parameter']}", "loss": "the manual loss",
                    "update": f"the manual optimizer's update of {first['parameter']}"}[first["kind"]]
            noise = f", the reference's own rounding {first['noise']:.2e}" if "noise" in first else ""
            diagnosis = "" if self.diagnosis is None else f"; diagnosis: {self.diagnosis}"
            return (f"twin DIVERGED at step {s}: {what} differs from the reference by {first['error']:.2e}{noise} "
                    f"{tol}{diagnosis}")
        w = self.worst()
        noise = f" ({w['noise']:.2e} the reference's own rounding there)" if w["noise"] > 0 else ""
        return (f"twin PASS: at every one of {self.steps} steps the manual gradient, loss and update matched the "
                f"reference at the same parameters; largest difference {w['error']:.2e}{noise} on {w['parameter']} at "
                f"step {w['step']}; the trajectories drifted {w['drift']:.2e} apart (rounding amplified by training, "
                f"not judged) {tol}")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "dtype": self.dtype, "steps": self.steps,
                "tolerance": {"norm": self.tolerance.norm, "noise_factor": self.noise_factor},
                "first_failure": self.first_failure, "worst": self.worst(),
                "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
                "final_drift": {name: float(v) for name, v in zip(self.names, self.drift[-1])} if self.steps else {}}

    def plot(self, ax) -> None:
        """Per step: the worst leaf's gradient difference, the fixed tolerance, and the two trajectories' drift."""
        steps = np.arange(1, self.steps + 1)
        tiny = np.finfo(np.float64).tiny  # bitwise-equal steps show at the floor of the log axis
        ax.plot(steps, np.maximum(self.grad.max(axis=1), tiny), label="manual vs reference gradient (same params)")
        ax.plot(steps, np.maximum(self.drift.max(axis=1), tiny), "--", label="trajectories' parameters (not judged)")
        ax.axhline(self.tolerance.norm, color="r", ls=":", label=f"tolerance ({self.dtype})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("normwise relative difference (worst parameter)")
        ax.set_title("twin check")
        ax.legend(fontsize=8)
