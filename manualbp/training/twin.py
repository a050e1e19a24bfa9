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

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from manualbp.verify.tolerances import Tolerance, tolerance


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def normwise(a, b):
    """||a - b|| / max(||a||, ||b||) (0 when both are 0; NaN when either holds a NaN or an Inf)."""
    denom = jnp.maximum(jnp.linalg.norm(a), jnp.linalg.norm(b))
    finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))
    rel = jnp.where(denom > 0, jnp.linalg.norm(a - b) / jnp.where(denom > 0, denom, 1), 0)
    return jnp.where(finite, rel, jnp.nan)


def _per_leaf(fn, a, b):
    return jnp.stack([fn(x, y).astype(jnp.float32) for x, y in zip(_leaves(a), _leaves(b), strict=True)])


def batch_orders(n: int, count: int = 3) -> list:
    """``count`` fixed random orders of a batch of n examples.

    Random, not structured: a reversal or a rotation by half keeps every pair of a pairwise (tree) reduction
    together, and addition is commutative, so such orders can reproduce the very same rounding.
    """
    rng = np.random.default_rng(0)
    return [rng.permutation(n) for _ in range(count)]


def rounding_neighbour(params, i: int):
    """``params`` with every entry moved by one rounding unit, p (1 + eps s), s = +-1 at random (seed ``i``)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(i), len(leaves))
    eps = [jnp.finfo(p.dtype).eps for p in leaves]
    return jax.tree_util.tree_unflatten(treedef, [p * (1 + e * jax.random.rademacher(k, p.shape, p.dtype))
                                                  for p, e, k in zip(leaves, eps, keys)])


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
      alone, in the sums or in the forward pass, moves that leaf by; 0 elsewhere;
      "loss": |loss_m - loss_r| / |loss_r|; "update": normwise difference per leaf of the manual
      optimizer's update and the reference optimizer's update of the same manual gradient;
      "drift": normwise difference per leaf of the two trajectories' parameters (shown, not judged);
      "finite": (2, n_leaves), whether every parameter of the manual / reference path is finite.
    """
    loss_m, grads_m, updates_m = manual
    loss_x, grads_x = reference_at(params, x, y)
    n = len(_leaves(grads_m))
    grad = _per_leaf(normwise, grads_m, grads_x)

    def spread():
        batch = x.shape[0] if hasattr(x, "shape") else _leaves(x)[0].shape[0]
        others = [reference_at(params, *jax.tree_util.tree_map(lambda a, o=order: a[o], (x, y)))[1]
                  for order in batch_orders(batch)]
        others += [reference_at(rounding_neighbour(params, i), x, y)[1] for i in range(3)]
        return jnp.max(jnp.stack([_per_leaf(normwise, grads_x, g) for g in others]), axis=0)

    need = ~jnp.all(grad <= tolerance(_leaves(grads_m)[0].dtype).norm)
    return {
        "grad": grad,
        "grad_noise": lax.cond(need, spread, lambda: jnp.zeros((n,), jnp.float32)),
        "loss": (jnp.abs(loss_m - loss_x) / jnp.abs(loss_x)).astype(jnp.float32),
        "update": _per_leaf(normwise, updates_m, updates_ref),
        "drift": _per_leaf(normwise, params_manual, params_reference),
        "finite": jnp.stack([jnp.stack([jnp.all(jnp.isfinite(p)) for p in _leaves(params)])
                             for params in (params_manual, params_reference)]),
    }


NOISE_FACTOR = 10.0  # k: a gradient may differ from the reference by k times the reference's own spread


def _passes(err, noise, tol, k):
    """err <= tol.norm (well conditioned: the fixed tolerance), or err <= k x noise (the reference's own spread over
    other batch orders and rounding neighbours, measured only on steps that needed it); NaN never passes."""
    return (err <= tol.norm) | (err <= k * noise)


@dataclass
class Divergence:
    """Twin mode's verdict, step by step, from the figures ``twin_figures`` recorded.

    Arrays have one row per step (row s is step s + 1) and, but ``loss``,
    one column per parameter leaf. A step fails when

    - any manual or reference parameter or loss is non-finite;
    - the manual gradient of a leaf differs from the reference gradient at
      the same parameters by more than ``tolerance.norm`` (normwise) AND by
      more than ``noise_factor`` times the reference's own spread over three
      other orders of the same batch and three rounding neighbours of the
      parameters (an ill-conditioned leaf, e.g. a bias whose gradient is a
      small sum of larger terms, or an LSTM's weights through a long
      sequence, rounds that much whoever computes it);
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
    noise_factor: float = NOISE_FACTOR

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
        grad = ~_passes(self.grad, self.grad_noise, tol, k)
        first = np.abs(self.losses[:1, 0]) if self.steps else 0
        loss = ~(self.loss <= tol.norm * np.maximum(1, first / np.abs(self.losses[:, 0])))
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
              "reference's own rounding spread]"
        first = self.first_failure
        if first is not None:
            s = first["step"]
            if first["kind"] == "non-finite":
                return f"twin DIVERGED: non-finite at step {s}, {first['parameter']} (the run blew up) {tol}"
            what = {"gradient": f"the manual gradient of {first['parameter']}", "loss": "the manual loss",
                    "update": f"the manual optimizer's update of {first['parameter']}"}[first["kind"]]
            noise = f", the reference's own spread {first['noise']:.2e}" if "noise" in first else ""
            return f"twin DIVERGED at step {s}: {what} differs from the reference by {first['error']:.2e}{noise} {tol}"
        w = self.worst()
        noise = f" ({w['noise']:.2e} the reference's own rounding spread there)" if w["noise"] > 0 else ""
        return (f"twin PASS: at every one of {self.steps} steps the manual gradient, loss and update matched the "
                f"reference at the same parameters; largest difference {w['error']:.2e}{noise} on {w['parameter']} at "
                f"step {w['step']}; the trajectories drifted {w['drift']:.2e} apart (rounding amplified by training, "
                f"not judged) {tol}")

    def to_dict(self) -> dict:
        return {"ok": self.ok, "dtype": self.dtype, "steps": self.steps,
                "tolerance": {"norm": self.tolerance.norm, "noise_factor": self.noise_factor},
                "first_failure": self.first_failure, "worst": self.worst(),
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
