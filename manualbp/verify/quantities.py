"""Which quantities a comparison has, in the order the pass computes them, read from either side.

Every quantity has a key, the same on both sides: ``("y", "<path>|out")`` a layer's output,
``("tap", "<path>|out")`` the gradient arriving at it (dL/dy), ``("tap", "<path>|in")`` the
gradient it passes on (dL/dx), ``("tap", "<path>|h")`` a recurrent layer's per-step gradients
(B, T, H), ``("param", "<path>", "dW")`` a parameter gradient, ``("loss",)``. Tuple values
get ".0", ".1", ... (the reference's tap names). ``manual_values`` reads them from a manual
record (``trace.record``); ``reference_values`` from any reference trace (``reference.trace``:
the reference itself, or a high-precision truth of it).

``row_order`` lists ``(layer label, quantity, key, t)`` in the order of the report, so that the
first failing row is where an error enters:

* forward: every layer's output, a container's after its children's, the model's last;
* the loss, then the head's dL/dlogits;
* backward, from the last layer to the first: the gradient arriving (dL/dy; a container's
  before its children's rows), a recurrent layer's per-step gradients in the order backprop
  through time computes them (t = T-1 down to 0; at each step dL/dh before dL/dc), the
  parameter gradients, and the gradient passed on (dL/dx; a container's after its children's,
  so a wrong identity path or branch sum first shows at the container itself).
"""

from __future__ import annotations

import jax

from manualbp.layers.base import children_of, name_of
from manualbp.layers.walk import param_name
from manualbp.verify.trace import label, walk
from manualbp.verify.vjp_inputs import describe_tree


def by_kind(kind: str, value) -> dict:
    """{kind: array} or, for a tuple value, {kind.0: ..., kind.1: ...} (the reference's tap names)."""
    if isinstance(value, (tuple, list)):
        out = {}
        for i, v in enumerate(value):
            out.update(by_kind(f"{kind}.{i}", v))
        return out
    return {} if value is None else {kind: value}


def _params(model, grads) -> dict:
    return {("param", path, param_name(kp)): leaf
            for path, layer, g in walk(model, grads) if not children_of(layer)
            for kp, leaf in jax.tree_util.tree_leaves_with_path(g)}


def manual_values(model, store, grads, loss) -> dict:
    """Every quantity of a manual record, by key (in the order each layer's record lists them)."""
    out = {("loss",): loss, **_params(model, grads)}
    for path, entry in store.items():
        for kind, prefix, value in (("y", "out", entry["y"]), ("tap", "out", entry.get("dy")),
                                    ("tap", "in", entry.get("dx"))):
            out.update({(kind, f"{path}|{k}"): v for k, v in by_kind(prefix, value).items()})
        # per-step kinds, in the layer's order (a jitted record numbers them: "00 h", "01 c")
        out.update({("tap", f"{path}|{k.split(' ')[-1]}"): v for k, v in entry.get("extras", {}).items()})
    return out


def reference_values(model, trace) -> dict:
    """Every quantity of a reference trace (``reference.trace``), by the same keys."""
    out = {("loss",): trace["loss"], **_params(model, trace["grads"])}
    out.update({("y", k): v for k, v in trace["outputs"].items()})
    out.update({("tap", k): v for k, v in trace["taps"].items()})
    return out


def union(manual: dict, reference: dict) -> dict:
    """Every quantity of either side, by key: manual's in its order, then those only the reference has.

    Rows are listed from this union, so a quantity the manual side leaves out (a parameter's gradient
    not returned, a dL/dx returned as None) is a row of its own (a failing "missing" row), never a
    row skipped; one only the manual side has is an "extra" row.
    """
    return {**manual, **{k: v for k, v in reference.items() if k not in manual}}


def tree_mismatches(model, params, grads) -> dict:
    """{layer path: why} for every leaf layer whose manual dparams is not a tree of params' structure."""
    out = {}
    for (path, layer, p), (_, _, g) in zip(walk(model, params), walk(model, grads)):
        if children_of(layer):
            continue
        if jax.tree_util.tree_structure(g) != jax.tree_util.tree_structure(p):
            out[path] = f"its backward returned dparams {describe_tree(g)}, its params are {describe_tree(p)}"
    return out


def missing_detail(key) -> str:
    """Why a quantity only the reference has is missing on the manual side, in the user's terms."""
    if key[0] == "param":
        return f"the backward returned no gradient for parameter {key[2][1:]}"
    if key[0] == "tap" and "|in" in key[1]:
        return "the backward returned no dL/dx (None) for a floating input"
    if key[0] == "tap" and "|out" in key[1]:
        return "no gradient reached this layer's output"
    if key[0] == "y":
        return "the forward returned no such output"
    return "the manual pass has no value for it"


def _of(values, kind, path, prefix):
    """Keys of ``kind`` at ``path`` whose name is ``prefix`` or ``prefix.i...`` (e.g. out, out.0, out.1)."""
    return [k for k in values if k[0] == kind and k[1].split("|", 1)[0] == path
            and k[1].split("|", 1)[1].split(".")[0] == prefix]


def _suffix(key, prefix):
    return key[1].split("|", 1)[1][len(prefix):]


def _steps(values, path, name):
    """A recurrent layer's per-step rows: t = T-1 down to 0, and at each step every kind in the layer's order."""
    keys = [k for k in values if k[0] == "tap" and k[1].split("|", 1)[0] == path
            and k[1].split("|", 1)[1].split(".")[0] not in ("in", "out")]
    if not keys:
        return []
    T = values[keys[0]].shape[1]
    return [(name, f"dL/d{k[1].split('|', 1)[1]}[t={t}]", k, t) for t in reversed(range(T)) for k in keys]


def row_order(model, head, values) -> list[tuple]:
    """``(label, quantity, key, t)`` for every row of a comparison, in report order (t: a time step or None)."""
    forward, backward = [], []

    def children(path, layer):
        return [(f"{path}/{n}" if path else n, child) for n, child in children_of(layer)]

    def visit_forward(path, layer):
        for child_path, child in children(path, layer):
            visit_forward(child_path, child)
        forward.extend((label(path, layer), "forward y" + _suffix(k, "out"), k, None) for k in _of(values, "y", path, "out"))

    def visit_backward(path, layer):
        name = label(path, layer)
        if path:  # the model's own dL/dy is the head's dL/dlogits, listed first
            backward.extend((name, "dL/dy" + _suffix(k, "out"), k, None) for k in _of(values, "tap", path, "out"))
        for child_path, child in reversed(children(path, layer)):
            visit_backward(child_path, child)
        backward.extend(_steps(values, path, name))
        backward.extend((name, k[2], k, None) for k in values if k[0] == "param" and k[1] == path)
        backward.extend((name, "dL/dx" + _suffix(k, "in"), k, None) for k in _of(values, "tap", path, "in"))

    visit_forward("", model)
    visit_backward("", model)
    head_rows = [(f"head {name_of(head)}", "dL/dlogits" + _suffix(k, "out"), k, None) for k in _of(values, "tap", "", "out")]
    return [*forward, (f"model {name_of(model)}", "loss", ("loss",), None), *head_rows, *backward]
