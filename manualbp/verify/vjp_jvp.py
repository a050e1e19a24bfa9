"""A ``jax.custom_jvp`` rule, checked: its JVP, and the VJP JAX derives from it, agree.

A custom_jvp rule defines J v; JAX transposes it into the VJP. ``check_vjp`` checks that VJP like any other; for
a function whose forward runs a custom_jvp rule (and no custom_vjp, which cannot be forward-differentiated) it
also checks, per differentiable input and for k random tangents v over it,

* the JVP itself, "<x> jvp": fn's J v against ``jax.jvp`` of the reference, or (no reference) against the
  central finite difference of f(x + s v) entry by entry, plus the Taylor test of J v, "<x> jvp taylor"
  (||f(x + h v) - f(x) - h J v|| falls as h^2);
* consistency, "<x> jvp/vjp": <u, J v> from the JVP equals <J^T u, v> from the VJP, for the check's own
  cotangents u. A rule whose tangent output is not linear in the tangents breaks it.

This module calls ``jax.jvp`` on the user's functions (``tests/test_purity.py`` names it).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.verify import taylor, vjp_numeric
from manualbp.verify.finite_differences import STEPS, refine
from manualbp.verify.rounding import move
from manualbp.verify.tolerances import DOT_ROUNDING, FINITE_DIFFERENCE_MODEL, Rule, tolerance
from manualbp.verify.verdict import FiniteDifference, judge, not_compared_row

_JAX = os.path.dirname(jax.__file__)


def applies(rules: dict) -> bool:
    """Whether fn's forward runs a custom_jvp rule of its own (not one of jax's library functions, such as
    ``jax.nn.relu``) and no custom_vjp (``jax.jvp`` refuses those)."""
    return any(_JAX not in str(src) for src in rules["custom_jvp"]) and not rules["custom_vjp"]


def _flat(y):
    return np.concatenate([np.asarray(b, np.float64).ravel() for b in jax.tree_util.tree_leaves(y)
                           if jnp.issubdtype(b.dtype, jnp.inexact)])


@functools.lru_cache(maxsize=16)
def _jvp_program(g):
    """One compiled JVP per function (every tangent of a check runs it)."""
    return jax.jit(lambda d, t: jax.jvp(g, (d,), (t,))[1])


def _jvp(g, diff, v):
    """J v of ``g`` at ``diff`` (v cast to each leaf's dtype), flattened to float64."""
    tangents = [jax.device_put(np.asarray(t).astype(a.dtype)) for a, t in zip(diff, v)]
    return _flat(_jvp_program(g)(diff, tangents))


def _dot(a, b) -> tuple:
    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b)]
    return float(sum(np.sum(x * y) for x, y in pairs)), float(sum(np.sum(np.abs(x * y)) for x, y in pairs))


def _consistency(name, label, us, jvs, pulls, vs, leaf, eps) -> tuple:
    """<u_i, J v_i> against <J^T u_i, v_i>: the rounding of both dot products bounds their honest difference."""
    via_jvp, via_vjp, bound = [], [], []
    for u, jv, pull, v in zip(us, jvs, pulls, vs):
        a, a_abs = _dot([_flat(u)], [jv])
        b, b_abs = _dot([pull[leaf]], [v[leaf]])
        via_jvp.append(a)
        via_vjp.append(b)
        bound.append(eps * (a_abs + b_abs))
    row = judge(name, f"{label} jvp/vjp", np.array(via_jvp), np.array(via_vjp), tolerance(np.float64),
                rule=Rule.CONDITIONING, errors=[np.array(bound)], manual_name="fn",
                note="<u, J v> from the JVP vs <J^T u, v> from the VJP",
                why="the VJP is not the transpose of the JVP (is the rule's tangent output linear in the tangents?)")
    return row, np.array(via_jvp), np.array(via_vjp)


def _tangents(masks, diff, leaf, k, rng):
    """k random tangents over input ``leaf`` (``vjp_numeric.directions``), each leaf in its input's dtype."""
    return [[np.asarray(t).astype(d.dtype) for t, d in zip(v, diff)]
            for v in vjp_numeric.directions(diff, masks, leaf, k, rng)]


def reference_rows(ctx, reference, tol, rule) -> list:
    """Against ``jax.jvp`` of the reference (and its float64 truth below float64), and fn's JVP/VJP consistency."""
    rng = np.random.default_rng(ctx.seed + 2)
    g_ref = ctx.inputs.closed(reference)
    high = None
    if jax.config.read("jax_enable_x64") and np.dtype(ctx.dtype) != np.dtype(np.float64):
        high = ctx.inputs.closed_high(reference, jnp.float64)
    out = []
    eps = float(jnp.finfo(ctx.work).eps)
    for leaf, label in enumerate(ctx.inputs.labels):
        if ctx.masks[leaf] is not None and not ctx.masks[leaf].any():
            out.append((not_compared_row(ctx.name, f"{label} jvp", "excluded: every entry excluded by where="),
                        None, None))
            continue
        vs = _tangents(ctx.masks, ctx.inputs.diff, leaf, ctx.k, rng)
        got = np.stack([_jvp(ctx.g_fn, ctx.inputs.diff, v) for v in vs])  # each output's values, in float64 exactly
        want = np.stack([_jvp(g_ref, ctx.inputs.diff, v) for v in vs])
        truth = None
        if high is not None:
            up = [np.asarray(a, np.float64) for a in ctx.inputs.diff]
            truth = np.stack([_jvp(high, [jnp.asarray(a) for a in up], [np.asarray(t, np.float64) for t in v])
                              for v in vs])
        row = judge(ctx.name, f"{label} jvp", got, want, tol, rule=rule if truth is not None or rule is not
                    Rule.ERROR_MODEL else Rule.FIXED, truth=truth, eps=eps if truth is not None else None,
                    manual_name="fn", note=f"J v for {ctx.k} random tangent{'s' * (ctx.k > 1)} over {label}")
        out.append((dataclasses.replace(row, shape=tuple(ctx.inputs.diff[leaf].shape)), got, want))
        out.append(_consistency(ctx.name, label, ctx.cts, got, ctx.got, vs, leaf, eps))
    return out


def consistency_rows(ctx, tol) -> list:
    """Only the consistency of fn's JVP with its VJP (the rule is meant to differ from the gradient)."""
    del tol
    rng = np.random.default_rng(ctx.seed + 2)
    eps = float(jnp.finfo(ctx.work).eps)
    out = []
    for leaf, label in enumerate(ctx.inputs.labels):
        vs = _tangents(ctx.masks, ctx.inputs.diff, leaf, ctx.k, rng)
        jvs = [_jvp(ctx.g_fn, ctx.inputs.diff, v) for v in vs]
        out.append(_consistency(ctx.name, label, ctx.cts, jvs, ctx.got, vs, leaf, eps))
    return out


def numeric_rows(name, g64, ln, x64, masks, us, pulls, k, tol, rng) -> list:
    """No reference, in float64: J v against finite differences of f entry by entry, its Taylor test, consistency."""
    f0 = ln.value(ln.x)
    spread = [np.abs(ln.value(move(ln.x, 100 + i, ln.eps)) - f0) for i in range(FINITE_DIFFERENCE_MODEL.samples)]
    sigma = np.maximum(ln.eps * np.abs(f0), np.max(spread, axis=0))
    hs = taylor.steps()
    out = []
    for leaf, label in enumerate(x64.labels):
        if masks[leaf] is not None and not masks[leaf].any():
            out.append((not_compared_row(name, f"{label} jvp", "excluded: every entry excluded by where="), None, None))
            continue
        vs = vjp_numeric.directions(ln.x, masks, leaf, k, rng)
        jvs = [_jvp(g64, x64.diff, v) for v in vs]
        values, errors = [], []
        for v, jv in zip(vs, jvs):
            def run(h, idx, v=v):
                vals = ln.out(_stack([v] * len(STEPS)), np.array(STEPS) * h)[:, idx]
                ones = np.ones(len(idx), bool)
                return vals, ones, ones, ones, ~ones

            value, error, _, _, _ = refine(run, f0.size, f0, vjp_numeric.H, sigma)
            values.append(value)
            errors.append(error + DOT_ROUNDING * ln.eps * np.abs(jv))
        m, fd, err = np.stack(jvs), np.stack(values), np.stack(errors)
        row = judge(name, f"{label} jvp", m, FiniteDifference(fd, err, fd, fd, np.full(m.shape, "central")), tol,
                    rule=Rule.FINITE_DIFFERENCE, manual_name="fn",
                    note=f"J v for {k} random tangent{'s' * (k > 1)} over {label}, entry by entry")
        out.append((dataclasses.replace(row, shape=tuple(np.shape(ln.x[leaf]))), m, fd))
        changes = ln.out(_stack([vs[0]] * len(hs)), hs) - f0
        data = taylor.Taylor(hs, changes, 2 * np.linalg.norm(sigma) + DOT_ROUNDING * ln.eps * hs * np.linalg.norm(jvs[0]))
        row = judge(name, f"{label} jvp taylor", jvs[0], data, None, rule=Rule.TAYLOR)
        out.append((dataclasses.replace(row, shape=tuple(np.shape(ln.x[leaf]))), jvs[0], data))
        out.append(_consistency(name, label, us, jvs, pulls, vs, leaf, ln.eps))
    return out


def _stack(trees):
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *trees)
