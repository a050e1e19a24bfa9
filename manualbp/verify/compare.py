"""Manual vs jax.grad, layer by layer.

``compare`` runs the model once by hand (recording every layer's output,
upstream gradient dL/dy and input gradient dL/dx) and once through the
reference with zero taps (see ``manualbp.reference.dispatch.Taps``), and
lines the two up by layer path (``quantities``). Each row is judged by
``verdict.judge``; where the verdict needs jax.grad's own error, the reference
is evaluated again in float64 and at nearby points (``rounding.measure``).
``check_layer`` (its own module) does the same for one layer alone against
``jax.vjp``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import reference as ref
from manualbp.backprop import as_inputs, check_pass_fits, check_values
from manualbp.layers.arguments import check_flag, check_head_object, check_layer_object
from manualbp.layers.base import check_finite, name_of
from manualbp.layers.code_key import Keyed
from manualbp.verify import forensics
from manualbp.verify.forensics import context_for
from manualbp.verify.precision import full_precision
from manualbp.verify.quantities import (
    by_kind,
    manual_values,
    missing_detail,
    reference_values,
    row_order,
    tree_mismatches,
    union,
)
from manualbp.verify.report import Report
from manualbp.verify.rounding import choices, measure, precise_truth
from manualbp.verify.tolerances import ERROR_MODEL, Rule, resolve_verdict, tolerance
from manualbp.verify.trace import record, walk
from manualbp.verify.verdict import EXTRA, MISSING, judge, structure_row

__all__ = ["by_kind", "compare", "dtype_of", "judge_all"]


def dtype_of(params, x):
    dtypes = [jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves((params, x))]  # no array made
    floating = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return np.dtype(floating[0]) if floating else np.dtype(np.float32)


def _at(values, key, t):
    v = values[key]
    return v if t is None else v[:, t]


def judge_all(rows, manual: dict, reference: dict, tol, verdict: Rule, dtype, evidence_fn, why=None,
              precise_fn=None) -> list:
    """Judge every ``(label, quantity, key, t)`` of ``rows``; ``evidence_fn(need)`` measures jax.grad's error when needed
    (``need``: the keys of the rows that failed the fixed tolerance, None for all).

    A key only one side has is a failing structure row: "missing" (``why(key)`` says what the manual
    side left out) or "extra". FIXED never measures; ERROR_MODEL always does; CONDITIONING does only
    when some row fails its fixed tolerance (so a clean report costs nothing extra), then judges every
    row again with the measurement (a row within its fixed tolerance still passes by it). Rows that still fail, or
    that nothing could measure, get a second look against ``precise_fn()``, the reference in 50+ digits (None when
    over budget): the float64 truth is itself wrong where a layer saturates.
    """
    eps = float(jnp.finfo(dtype).eps)
    why = why or (lambda key: "the manual side has no value for it")

    def run(evidence):
        out = []
        for label, quantity, key, t in rows:
            if key not in manual or key not in reference:
                kind, detail = ((MISSING, why(key)) if key not in manual else
                                (EXTRA, "the manual side returned it, the reference has no such quantity"))
                shape = np.shape((reference if key in reference else manual)[key])
                out.append(structure_row(label, quantity, kind, detail, shape if t is None else shape[:1] + shape[2:]))
                continue
            kw = {}
            if evidence is not None:
                kw = {"truth": None if evidence.truth is None else _at(evidence.truth, key, t),
                      "errors": [_at(e, key, t) for e in evidence.errors if key in e],
                      "unmeasured": key in evidence.unmeasured}
            out.append(judge(label, quantity, _at(manual, key, t), _at(reference, key, t), tol,
                             rule=verdict, eps=eps, **kw))
        return out

    def doubtful(judged):
        return {key for row, (_, _, key, _) in zip(judged, rows)
                if row.rule is not Rule.STRUCTURE and (not row.ok or not row.compared)}

    evidence = None
    if verdict is Rule.ERROR_MODEL:
        evidence = evidence_fn(None)
        judged = run(evidence)
    else:
        judged = run(None)
        if verdict is Rule.CONDITIONING and doubtful(judged):
            evidence = evidence_fn(doubtful(judged))
            judged = run(evidence)
    if evidence is not None and precise_fn is not None and doubtful(judged):
        truth = precise_fn()
        if truth is not None:
            judged = run(evidence._replace(truth=truth, unmeasured=frozenset()))
    return judged


def _batch(x) -> int | None:
    leaves = [v for v in jax.tree_util.tree_leaves(x) if np.ndim(v)]
    return int(np.shape(leaves[0])[0]) if leaves else None


def diagnoser(model, params, x, rows, judged, manual: dict, reference: dict):
    """``i -> Diagnosis`` of row i of a comparison (``forensics``): named by the layer's sizes, fitted against the
    report's other quantities of the same shape (a missing path is one of them) and the layer's named terms."""
    layers = {path: (layer, p) for path, layer, p in walk(model, params)}
    batch, devices = _batch(x), jax.device_count()
    names = {k: f"{lab} {q}" for lab, q, k, s in rows if s is None}

    def path_of(key):
        return key[1] if key[0] == "param" else key[1].split("|")[0] if len(key) > 1 else ""

    def terms(path, key):
        """A dL/dx row of a layer that names its backward's terms: them, at the reference's input and dL/dy."""
        layer, p = layers.get(path, (None, None))
        inputs = ("y", f"{path}|in"), ("tap", f"{path}|out")
        if key != ("tap", f"{path}|in") or not hasattr(layer, "backward_terms") or not all(k in reference for k in inputs):
            return {}
        return {n: np.asarray(v) for n, v in layer.backward_terms(p, *(reference[k] for k in inputs)).items()}

    def values_of(i, whole=True):  # a per-step row over every step first: where in time the error sits is half the answer
        _, _, key, t = rows[i]
        return (manual[key], reference[key]) if whole else (_at(manual, key, t), _at(reference, key, t))

    def context_of(i, whole=True):
        key = rows[i][2]
        shape = np.shape(values_of(i, whole)[1])
        path = path_of(key)
        same = sorted((k for k in names if k != key and k in reference and np.shape(reference[k]) == shape),
                      key=lambda k: path_of(k) != path)  # the row's own layer first: equal arrays name it
        others = {names[k]: reference[k] for k in same}
        out = reference.get(("y", f"{path}|out"))
        return context_for(layers.get(path, (model,))[0], shape, batch=batch, is_param=key[0] == "param",
                           others=others, terms=terms(path, key), devices=devices,
                           output_shape=None if out is None else np.shape(out))

    over_time = forensics.diagnoser(judged, values_of, context_of)
    at_step = forensics.diagnoser(judged, lambda i: values_of(i, False), lambda i: context_of(i, False))

    def run(i):
        found = over_time(i)
        if rows[i][3] is None or found.kind != forensics.NONE:
            return found
        return at_step(i)  # nothing over every step: the row's own step alone (a padded step given a gradient)

    return run


def _record(model, head, params, x, y, mask):
    """One manual pass, recorded (``trace.record``), without the layers' inputs."""
    loss, grads, store = record(model, head, params, x, y, mask)
    return loss, grads, _without_inputs(store)


def _without_inputs(store):
    """The record without the layers' inputs, a recurrent layer's per-step kinds numbered in its order."""
    out = {}
    for path, entry in store.items():
        out[path] = {k: v for k, v in entry.items() if k not in ("x", "extras")}
        if "extras" in entry:  # jit returns a dict's keys sorted: number the kinds to keep the layer's order
            out[path]["extras"] = {f"{i:02d} {kind}": v for i, (kind, v) in enumerate(entry["extras"].items())}
    return out


# compiled once per (model, head, the code they run: ``Keyed``) and shapes
_record_jit = partial(jax.jit, static_argnums=0)(lambda key, *args: _record(*key.value, *args))


@full_precision
def compare(model, head, params, x, y, mask=None, *, jit: bool = True, title: str | None = None,
            verdict: str = "auto") -> Report:
    """Compare manual backprop with jax.grad of the reference, layer by layer.

    Rows (``quantities.row_order``), in the order the pass computes them: every layer's
    forward output, the loss, the head's dL/dlogits, then backward from the last layer to the
    first: each layer's upstream gradient dL/dy, its per-step gradients (recurrent layers:
    t = T-1 down to 0), its parameter gradients and its input gradient dL/dx; a container's
    dL/dy comes before its children's rows and its dL/dx after them. So the first failing row
    is where an error enters.

    Args:
      verdict: "auto" (the dtype's default: "conditioning" for float32/float64,
        "error-model" for bfloat16/float16), "fixed", "conditioning" or "error-model"
        (``manualbp.verify.verdict``).

    Raises, before any verdict: TypeError for a model that is not a layer or a head that is not a
    loss head; ValueError if x or params hold NaN/Inf (a comparison of garbage proves nothing);
    and every error ``value_and_grad`` raises for invalid inputs, with its message
    (``backprop.check_values``: labels out of range, an all-zero mask, ids or lengths out of
    range), so that a bad input is never reported as a failing backward. Non-finite gradients
    show as failing rows instead.
    """
    check_layer_object("compare", model)
    check_head_object("compare", head)
    check_flag("compare", "jit", jit)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"compare: title must be a str, got {type(title).__name__}")
    x, y, mask = as_inputs(x, y, mask, where="compare")  # x may be a tuple, e.g. (x, h0)
    check_finite(name_of(model), "input x", x)
    check_finite(name_of(model), "params", params)
    check_values(model, head, params, x, y, mask)
    check_pass_fits(model, params, x, "compare")
    dtype = dtype_of(params, x)
    tol = tolerance(dtype)
    verdict = resolve_verdict(verdict, dtype, "compare")

    if jit:
        m_loss, m_grads, store = _record_jit(Keyed(model, head), params, x, y, mask)
    else:
        m_loss, m_grads, store = _record(model, head, params, x, y, mask)
    m_values = manual_values(model, store, m_grads, m_loss)
    r_values = reference_values(model, ref.trace(model, head, params, x, y, mask))

    def evidence(need):
        def evaluate(point):
            return reference_values(model, ref.trace(model, head, *point))

        return measure(evaluate, (params, x, y, mask), 2, dtype, samples=ERROR_MODEL.samples, same_pieces=choices(model),
                       need=need)

    def precise():
        return precise_truth(lambda point: reference_values(model, ref.trace(model, head, *point)), (params, x, y, mask))

    rows = row_order(model, head, union(m_values, r_values))
    report = Report(title or f"manualbp vs jax.grad: {name_of(model)} + {name_of(head)}", dtype.name, tol,
                    verdict=verdict)
    trees = tree_mismatches(model, params, m_grads)

    def why(key):
        detail = missing_detail(key)
        return detail + (f" ({trees[key[1]]})" if key[0] == "param" and key[1] in trees else "")

    report.rows.extend(judge_all(rows, m_values, r_values, tol, verdict, dtype, evidence, why, precise))
    report.set_diagnoser(diagnoser(model, params, x, rows, report.rows, m_values, r_values))
    for label, quantity, key, t in rows:
        if t == 0 and key in m_values:  # a recurrent layer's per-step gradients: ||dL/dh_t|| for plots
            val = np.asarray(m_values[key], np.float64)
            axes = tuple(i for i in range(val.ndim) if i != 1)
            report.timestep_norms[f"{label} {quantity.split('[')[0]}"] = np.sqrt(np.sum(val**2, axis=axes))
    return report
