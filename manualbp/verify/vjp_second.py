"""Second order, on request (``check_vjp(..., order=2)``): the VJP of fn's VJP.

With a cotangent u of the outputs and w of the inputs, the second-order quantity of each input is

.. math::
    \\nabla_x \\langle w, J(x)^T u \\rangle,

what ``jax.grad`` of ``jax.grad`` (Hessian-vector products, meta-learning, gradient penalties) computes through
fn's backward. JAX differentiates the backward's own ops for it, so a rule right to first order can still be
wrong here (a cotangent computed with ``stop_gradient``, a residual saved without its dependence on x), and a rule
whose backward JAX cannot differentiate (a host callback, ``as_function``'s first-order-only identity) fails the
row, saying so. Rows "<x> second order", against:

* the reference's (or expected_vjp's) second-order quantity, for k random (u, w);
* no reference: finite differences of psi(s) = <w, J(x + s v)^T u> along k random directions v per input (fn's
  own backward run at nearby points, float64), compared with <second-order quantity, v>.

This module calls ``jax.vjp`` on the user's functions (``tests/test_purity.py`` names it).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.verify import vjp_numeric
from manualbp.verify.finite_differences import STEPS, refine
from manualbp.verify.rounding import move
from manualbp.verify.tolerances import DOT_ROUNDING, FINITE_DIFFERENCE_MODEL, Rule
from manualbp.verify.verdict import NOT_COMPUTED, FiniteDifference, judge, structure_row


def _second(first, diff, u, w):
    """d/dx <w, first(x, u)> at diff: ``first(x, u)`` is a list of cotangents aligned with diff."""
    return jax.vjp(lambda d: first(d, u), diff)[1](w)[0]


def _pullback_of(g):
    """x, u -> J_g(x)^T u: the first-order VJP as a function JAX can differentiate again."""
    return lambda d, u: jax.vjp(g, d)[1](u)[0]


def _expected_first(ctx, expected_vjp):
    """x, u -> expected_vjp's cotangents for the differentiable leaves (zeros where it gives None)."""
    paths = jax.tree_util.tree_flatten_with_path((tuple(ctx.inputs.args), ctx.inputs.kwargs))[0]

    def first(d, u):
        args, kwargs = ctx.inputs.rebuild(d)
        out = expected_vjp(tuple(args), u, **kwargs)
        found = {jax.tree_util.keystr(kp): v
                 for kp, v in jax.tree_util.tree_flatten_with_path(tuple(out), is_leaf=lambda v: v is None)[0]}
        given = [found.get(jax.tree_util.keystr(paths[j][0][1:])) for j in ctx.inputs.diff_index]
        return [jnp.zeros_like(a) if g is None else g for g, a in zip(given, d)]

    return first


def _ws(diff, k, seed):
    rng = np.random.default_rng(seed + 3)
    return [[jax.device_put(rng.standard_normal(np.shape(a)).astype(a.dtype)) for a in diff] for _ in range(k)]


def _failed(ctx, e) -> list:
    why = (f"the backward cannot be differentiated (second order): {type(e).__name__}: "
           f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    return [(structure_row(ctx.name, f"{label} second order", NOT_COMPUTED, why, leaf.shape), None, None)
            for label, leaf in zip(ctx.inputs.labels, ctx.inputs.diff)]


def rows(ctx, reference, expected_vjp, tol, rule, numeric) -> list:
    """The "<x> second order" rows (see the module docstring)."""
    if numeric:
        return _numeric_rows(ctx, tol)
    first = _pullback_of(ctx.g_fn)
    ws = _ws(ctx.inputs.diff, ctx.k, ctx.seed)
    run = jax.jit(lambda d, u, w: _second(first, d, u, w)) if ctx.jit else (lambda d, u, w: _second(first, d, u, w))
    try:
        got = [run(ctx.inputs.diff, u, w) for u, w in zip(ctx.cts, ws)]
    except Exception as e:  # noqa: BLE001  (a rule that cannot be differentiated twice: a failing row, saying so)
        return _failed(ctx, e)
    target = _expected_first(ctx, expected_vjp) if expected_vjp is not None else _pullback_of(ctx.inputs.closed(reference))
    run_target = jax.jit(lambda d, u, w: _second(target, d, u, w))
    want = [run_target(ctx.inputs.diff, u, w) for u, w in zip(ctx.cts, ws)]
    out = []
    for i, label in enumerate(ctx.inputs.labels):
        a = np.stack([np.asarray(v[i]) for v in got])
        b = np.stack([np.asarray(v[i]) for v in want])
        row, a, b = ctx.masked(f"{label} second order", i, a, b, tol, verdict=Rule.FIXED if rule is Rule.ERROR_MODEL
                               else rule, note=f"{ctx.k} random (u, w)")
        out.append((row, a, b))
    return out


def _numeric_rows(ctx, tol) -> list:
    """No reference: <second-order quantity, v> against finite differences of psi(s) = <w, J(x + s v)^T u>."""
    x64, g64, ln, us, pulls, work, rng = ctx.numeric
    del pulls, work
    with jax.enable_x64(True):
        first = _pullback_of(g64)
        ws = _ws(x64.diff, ctx.k, ctx.seed)
        run = jax.jit(lambda d, u, w: _second(first, d, u, w))
        try:
            second = [run(x64.diff, u, w) for u, w in zip(us, ws)]
        except Exception as e:  # noqa: BLE001
            return _failed(ctx, e)

        def psi(x, u, w, v, s):
            cts = first([a + s * b for a, b in zip(x, v)], u)
            return sum(jnp.vdot(jnp.asarray(c, jnp.float64).ravel(), jnp.asarray(d, jnp.float64).ravel())
                       for c, d in zip(cts, w))

        batched = vjp_numeric.batched(psi, 1, 4)
        stack = lambda trees: jax.tree_util.tree_map(lambda *a: np.stack(a), *trees)  # noqa: E731
        zero = [np.zeros(np.shape(a)) for a in ln.x]
        U, W, V0, S0 = stack(us), stack(ws), stack([zero] * len(us)), np.zeros(len(us))
        f0 = batched(ln.x, U, W, V0, S0)
        spread = [np.abs(batched(move(ln.x, 200 + j, ln.eps), U, W, V0, S0) - f0)
                  for j in range(FINITE_DIFFERENCE_MODEL.samples)]
        sigma = np.maximum(ln.eps * np.abs(f0), np.max(spread, axis=0))
        out = []
        for leaf, label in enumerate(x64.labels):
            vs = vjp_numeric.directions(ln.x, ctx.masks, leaf, ctx.k, rng)

            def run(h, idx, vs=vs):
                items = [(us[i], ws[i], vs[i], r * h) for i in idx for r in STEPS]
                vals = batched(ln.x, *(stack([it[j] for it in items]) for j in range(3)),
                               np.array([it[3] for it in items]))
                ones = np.ones(len(idx), bool)
                return vals.reshape(len(idx), len(STEPS)).T, ones, ones, ones, ~ones

            value, error, lo, hi, kind = refine(run, ctx.k, f0, vjp_numeric.H, sigma)
            analytic = np.array([float(np.sum(np.asarray(s[leaf], np.float64) * vs[i][leaf]))
                                 for i, s in enumerate(second)])
            absolute = np.array([float(np.sum(np.abs(np.asarray(s[leaf], np.float64) * vs[i][leaf])))
                                 for i, s in enumerate(second)])
            row = judge(ctx.name, f"{label} second order", analytic,
                        FiniteDifference(value, error + DOT_ROUNDING * ln.eps * absolute, lo, hi, kind), tol,
                        rule=Rule.FINITE_DIFFERENCE, manual_name="fn",
                        note=f"{ctx.k} random directions; psi(s) = <w, J(x + s v)^T u>")
            out.append((dataclasses.replace(row, shape=tuple(np.shape(ln.x[leaf]))), analytic, value))
        return out
