"""Manual vs jax.grad, layer by layer.

``compare`` runs the model once by hand (recording every layer's output,
upstream gradient dL/dy and input gradient dL/dx) and once through the
reference with zero taps (see ``manualbp.reference.dispatch.Taps``), and
lines the two up by layer path. ``check_layer`` (its own module) does the
same for one layer alone against ``jax.vjp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import reference as ref
from manualbp.layers.base import check_finite, children_of, name_of
from manualbp.verify.report import Report, compare_arrays, param_rows
from manualbp.verify.tolerances import tolerance
from manualbp.verify.trace import label as _label
from manualbp.verify.trace import record, walk


def by_kind(kind: str, value) -> dict:
    """{kind: array} or, for a tuple value, {kind.0: ..., kind.1: ...} (the reference's tap names)."""
    if isinstance(value, (tuple, list)):
        out = {}
        for i, v in enumerate(value):
            out.update(by_kind(f"{kind}.{i}", v))
        return out
    return {} if value is None else {kind: value}


def dtype_of(params, x):
    leaves = [leaf for leaf in jax.tree_util.tree_leaves((params, x)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return np.dtype(leaves[0].dtype) if leaves else np.dtype(np.float32)


def compare(model, head, params, x, y, mask=None, *, jit: bool = True, title: str | None = None) -> Report:
    """Compare manual backprop with jax.grad of the reference, layer by layer.

    Rows, for every layer that is not a container: its forward output, the
    upstream gradient dL/dy flowing into it, its input gradient dL/dx, each
    parameter gradient, and any per-step gradient it exposes (dL/dh_t of a
    recurrent layer); then the model's input gradient and the loss.

    Raises ValueError if x or params hold NaN/Inf (a comparison of garbage
    proves nothing); non-finite gradients show as failing rows instead.
    """
    x, y = jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(y)  # x may be a tuple, e.g. (x, h0)
    check_finite(name_of(model), "input x", x)
    check_finite(name_of(model), "params", params)
    dtype = dtype_of(params, x)
    tol = tolerance(dtype)

    def manual(params, x, y, mask):
        loss, grads, store = record(model, head, params, x, y, mask)
        return loss, grads, {p: {k: v for k, v in e.items() if k != "x"} for p, e in store.items()}

    m_loss, m_grads, store = (jax.jit(manual) if jit else manual)(params, x, y, mask)
    r = ref.trace(model, head, params, x, y, mask)
    r_out, r_taps = r["outputs"], r["taps"]

    report = Report(title or f"manualbp vs jax.grad: {name_of(model)} + {name_of(head)}", dtype.name, tol)
    # rows in the order the pass computes them, so the first failing row is where the error enters:
    # forward outputs layer by layer, the loss, then the backward pass from the last layer to the first
    forward_rows, backward_rows = [], []
    leaves = [(p, layer, gm, gr) for (p, layer, gm), (_, _, gr) in zip(walk(model, m_grads), walk(model, r["grads"]))
              if not children_of(layer) or not p]  # an inner container's values are its children's
    for path, layer, _, _ in [*leaves[1:], leaves[0]]:  # the model's own output last
        for key, val in by_kind("out", store[path]["y"]).items():
            forward_rows.append(compare_arrays(_label(path, layer), "forward y" + key[3:], val,
                                               r_out[f"{path}|{key}"], tol))
    for path, layer, gm, gr in reversed(leaves):
        label, entry = _label(path, layer), store[path]
        if not children_of(layer):
            for key, val in by_kind("out", entry["dy"]).items():
                backward_rows.append(compare_arrays(label, "dL/dy" + key[3:], val, r_taps[f"{path}|{key}"], tol))
            for kind, val in entry.get("extras", {}).items():
                # extras are per-time-step quantities of shape (B, T, ...): one row per step t
                rv = r_taps[f"{path}|{kind}"]
                for t in range(val.shape[1]):
                    backward_rows.append(compare_arrays(label, f"dL/d{kind}[t={t}]", val[:, t], rv[:, t], tol))
                axes = tuple(i for i in range(val.ndim) if i != 1)
                report.timestep_norms[f"{label} dL/d{kind}"] = np.sqrt(
                    np.sum(np.asarray(val, np.float64) ** 2, axis=axes))
            backward_rows.extend(param_rows(label, gm, gr, tol))
        for key, val in by_kind("in", entry["dx"]).items():
            backward_rows.append(compare_arrays(label, "dL/dx" + key[2:], val, r_taps[f"{path}|{key}"], tol))
    loss_row = compare_arrays(f"model {name_of(model)}", "loss", m_loss, r["loss"], tol)
    report.rows.extend([*forward_rows, loss_row, *backward_rows])
    return report
