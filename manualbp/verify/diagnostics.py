"""Gradient-flow diagnostics: per layer, how big the gradient is and whether units are saturated.

``gradient_flow`` runs one manual forward/backward with the recorder of
``manualbp.verify.trace`` and reduces what passed through every layer to a
few numbers (by BP2 of Nielsen, ch. 2, delta^l is a product of W^T f'(z)
factors, so its norm per layer shows gradients vanishing or exploding):

* ||dL/dy_l||, ||dL/dx_l||: Frobenius norms over the whole batch of the
  gradient arriving at the layer's output (delta^l for a Dense layer) and
  leaving through its input;
* ||dW_l||, ||W_l||: norms of all the layer's parameters taken as one vector
  (W and b together), and the update-to-weight ratio lr ||dW_l|| / ||W_l||
  of a plain SGD step (around 1e-3 is the usual healthy figure);
* saturation: for Sigmoid and Tanh the fraction of activations with
  |f'| < 0.01 (f' = y(1 - y), 1 - y^2); for ReLU the fraction of dead units,
  units (last-axis features) that are never positive over the batch;
* for layers exposing per-step gradients (``backward_trace`` extras such as
  {"h": dL/dh_t of shape (B, T, H)}), ||dL/dh_t|| per time step t.

Nothing is raised for NaN/Inf: a row whose arrays hold non-finite values is
flagged (``row.flagged``), which is what an explosion looks like.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.backprop import as_inputs, check_values
from manualbp.layers.activations import ReLU, Sigmoid, Tanh
from manualbp.layers.arguments import check_flag, check_head_object, check_layer_object, check_number
from manualbp.layers.base import children_of, name_of
from manualbp.layers.code_key import Keyed
from manualbp.verify.trace import label, record, walk

SATURATION_THRESHOLD = 0.01


def _leaves64(tree):
    return [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(tree)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]


def _scaled_norm(a, axis=None):
    """sqrt(sum a^2) computed as m sqrt(sum (a/m)^2), m = max|a|: no overflow or underflow of the squares
    (gradients of 1e-200 or 1e+200 are exactly what these diagnostics are for); nan/inf propagate."""
    m = np.max(np.abs(a), axis=axis, keepdims=True) if a.size else np.zeros((1,) * a.ndim)
    safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
    out = safe * np.sqrt(np.sum((a / safe) ** 2, axis=axis, keepdims=True))
    out = np.where(np.isfinite(m), out, m)  # an inf entry makes the norm inf (nan stays nan via the sum)
    return np.squeeze(out, axis=axis) if axis is not None else float(out.reshape(()))


def _norm(tree) -> float:
    """The 2-norm of every floating leaf and entry taken as one vector; nan/inf propagate."""
    return math.hypot(*(_scaled_norm(leaf) for leaf in _leaves64(tree)))


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(leaf))) for leaf in _leaves64(tree))


def _saturation(layer, y) -> tuple[float | None, str]:
    """(fraction, what) for Sigmoid / Tanh / ReLU outputs y; (None, "") for other layers."""
    if not hasattr(y, "shape"):
        return None, ""
    y = np.asarray(y, np.float64)
    if isinstance(layer, Sigmoid):
        return float(np.mean(y * (1 - y) < SATURATION_THRESHOLD)), "sigmoid'<0.01"
    if isinstance(layer, Tanh):
        return float(np.mean(1 - y * y < SATURATION_THRESHOLD)), "tanh'<0.01"
    if isinstance(layer, ReLU):
        ever_positive = np.any(y.reshape(-1, y.shape[-1]) > 0, axis=0)  # per unit, over batch (and time/space)
        return float(np.mean(~ever_positive)), "dead ReLU"
    return None, ""


@dataclass
class FlowRow:
    """One layer's gradient-flow numbers (see the module docstring). ``None`` where not applicable."""

    layer: str
    dy_norm: float
    dx_norm: float
    grad_norm: float | None
    weight_norm: float | None
    update_ratio: float | None
    saturated: float | None
    saturation: str
    timestep_norms: dict = field(default_factory=dict)
    flagged: str = ""


@dataclass
class GradientFlow:
    """The rows of ``gradient_flow``, in forward order; print it for a table."""

    title: str
    loss: float
    lr: float
    rows: list[FlowRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True iff the loss and every recorded array are finite."""
        return math.isfinite(self.loss) and not any(r.flagged for r in self.rows)

    @property
    def flagged(self) -> list[FlowRow]:
        return [r for r in self.rows if r.flagged]

    def row(self, layer: str) -> FlowRow:
        for r in self.rows:
            if r.layer == layer:
                return r
        raise KeyError(f"no row {layer!r}; rows: {[r.layer for r in self.rows]}")

    def __str__(self) -> str:
        def f(v):
            return "-" if v is None else f"{v:.2e}"

        head = ("layer", "||dL/dy||", "||dL/dx||", "||dW||", "||W||", "lr||dW||/||W||", "saturated", "status")
        body = [
            (r.layer, f(r.dy_norm), f(r.dx_norm), f(r.grad_norm), f(r.weight_norm), f(r.update_ratio),
             "-" if r.saturated is None else f"{100 * r.saturated:.1f}% {r.saturation}",
             f"FLAGGED: {r.flagged}" if r.flagged else "ok")
            for r in self.rows
        ]
        widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
        lines = [f"{self.title}  [loss {self.loss:.4e}, lr {self.lr:g}]"]
        for i, cells in enumerate([head, *body]):
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for r in self.rows:
            for kind, norms in r.timestep_norms.items():
                lines.append(f"{r.layer} ||dL/d{kind}_t||, t = 0..{len(norms) - 1}: "
                             + " ".join(f"{v:.2e}" for v in norms))
        n = len(self.flagged)
        loss_note = "" if math.isfinite(self.loss) else f", loss {self.loss}"
        lines.append("all values finite" if self.ok else f"NON-FINITE: {n} flagged row(s){loss_note}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready (non-finite floats become strings)."""

        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            if isinstance(v, dict):
                return {k: clean(u) for k, u in v.items()}
            if isinstance(v, list):
                return [clean(u) for u in v]
            return v

        return clean({"title": self.title, "loss": self.loss, "lr": self.lr, "ok": self.ok,
                      "rows": [asdict(r) for r in self.rows]})


@lru_cache(maxsize=32)
def _jitted_record(key: Keyed):
    """One compiled recorder per (model, head, the code they run), reused across calls (a sweep over weights compiles once)."""
    return jax.jit(partial(record, *key.value))


def gradient_flow(model, head, params, x, y, mask=None, *, lr: float = 1e-2, jit: bool = True) -> GradientFlow:
    """Per-layer gradient norms, update-to-weight ratios and saturation from one manual pass.

    Args:
      model: a layer (usually ``Sequential``); rows are its non-container layers.
      head: a loss head.
      params, x, y, mask: the point to diagnose, as for ``value_and_grad``.
      lr: the learning rate of the update-to-weight ratio lr ||dW|| / ||W||.
      jit: compile the recorded pass.

    Returns:
      A ``GradientFlow``: ``.rows`` (one ``FlowRow`` per layer), ``.ok``,
      ``.flagged`` (rows holding NaN/Inf), ``str()`` a table, ``to_dict()``.

    Raises what ``value_and_grad`` raises for a bad model, head or input, before the pass.
    """
    check_layer_object("gradient_flow", model)
    check_head_object("gradient_flow", head)
    check_number("gradient_flow", "lr", lr, low=0, low_open=True)
    check_flag("gradient_flow", "jit", jit)
    x, y, mask = as_inputs(x, y, mask, where="gradient_flow")
    check_values(model, head, params, x, y, mask)
    run = _jitted_record(Keyed(model, head)) if jit else partial(record, model, head)
    loss, grads, store = run(params, x, y, mask)
    flow = GradientFlow(f"gradient flow: {name_of(model)} + {name_of(head)}", float(loss), float(lr))
    for (path, layer, p), (_, _, g) in zip(walk(model, params), walk(model, grads), strict=True):
        if children_of(layer):
            continue
        entry = store[path]
        has_params = bool(jax.tree_util.tree_leaves(p))
        gn, wn = (_norm(g), _norm(p)) if has_params else (None, None)
        ratio = None
        if has_params:
            ratio = lr * gn / wn if wn > 0 else (math.inf if gn > 0 else 0.0)
        frac, what = _saturation(layer, entry["y"])
        steps = {}
        for kind, val in entry.get("extras", {}).items():
            axes = tuple(i for i in range(val.ndim) if i != 1)  # (B, T, ...): a norm per step t
            steps[kind] = [float(v) for v in _scaled_norm(np.asarray(val, np.float64), axis=axes)]
        checks = {"y": entry["y"], "dL/dy": entry["dy"], "dL/dx": entry["dx"], "dW": g, "W": p,
                  **{f"dL/d{k}_t": v for k, v in entry.get("extras", {}).items()}}
        bad = [name for name, tree in checks.items() if not _finite(tree)]
        flow.rows.append(FlowRow(label(path, layer), _norm(entry["dy"]), _norm(entry["dx"]), gn, wn, ratio,
                                 frac, what, steps, "non-finite " + ", ".join(bad) if bad else ""))
    return flow
