"""check_vjp with no reference: fn's own VJP against float64 finite differences and the Taylor test.

Most hand-written rules have no second, autodiff-able version of their computation beside them. Their forward
is the reference then: with a cotangent u and a direction v over one input, phi(s) = <u, f(x + s v)> is a
scalar function of s whose derivative at 0 is <J^T u, v>, the cotangent's component along v. Two independent
measurements of phi'(0), each from the forward alone, in float64:

* a finite difference (``finite_differences.estimate``: central differences at h, h/2, h/4, Richardson-
  extrapolated, with the estimated truncation + rounding error; the step grows while rounding dominates),
  judged by ``Rule.FINITE_DIFFERENCE`` (``gradcheck``'s rule) in k random directions per input, or every
  coordinate (``mode="exhaustive"``: the whole cotangent J^T u);
* the Taylor test (``taylor``): |phi(h) - phi(0) - h <J^T u, v>| must fall as h^2, ``Rule.TAYLOR``.

The rounding noise sigma of phi is measured, not assumed: phi at points one rounding step of the function's
working precision away (every input entry times 1 +/- eps). The working precision is the lowest floating dtype
anywhere in the float64 computation (a kernel that accumulates in float32 inside is as noisy as float32).

Directions are scaled by each input's own size (root mean square of its entries), so a step h moves every
entry by about h times its scale; ``where=`` masks zero the directions on excluded entries.

Nothing here calls autodiff: the VJP values come from ``check_vjp``; only fn's forward runs here.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.verify import taylor
from manualbp.verify.finite_differences import CENTRAL, STEPS, refine
from manualbp.verify.rounding import move
from manualbp.verify.tolerances import DOT_ROUNDING, FINITE_DIFFERENCE_MODEL, Rule
from manualbp.verify.verdict import FiniteDifference, judge, not_compared_row

CHUNK = 16  # items per compiled call (the last call padded): one program, whatever the number of items
EXHAUSTIVE_LIMIT = 20_000  # evaluations of fn per cotangent and step that mode="exhaustive" accepts (6 steps each)
H = 1e-4  # the finite difference's largest step (relative to each input's scale); its error estimate, not h, judges


def lowest_float(closed_jaxpr) -> np.dtype:
    """The lowest-precision floating dtype of any value in a jaxpr and the jaxprs nested in it (float64 if none)."""
    found = [np.dtype(np.float64)]

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                dt = getattr(getattr(v, "aval", None), "dtype", None)
                if dt is not None and jnp.issubdtype(dt, jnp.floating):
                    found.append(np.dtype(dt))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        visit(inner)

    visit(closed_jaxpr.jaxpr)
    return max(found, key=lambda d: float(jnp.finfo(d).eps))


def batched(f, n_fixed: int, n_items: int):
    """``run(*fixed, *items) -> f(*fixed, *item)`` for stacked items (NumPy, leading axis), CHUNK at a time through
    one compiled ``vmap``; item by item (one compiled call each) for a function that cannot be batched."""
    vf = jax.jit(jax.vmap(f, in_axes=(None,) * n_fixed + (0,) * n_items))
    one = jax.jit(f)
    vmappable = [True]

    def run(*args):
        fixed, items = args[:n_fixed], args[n_fixed:]
        n = len(jax.tree_util.tree_leaves(items)[0])
        pad = -(-n // CHUNK) * CHUNK
        idx = np.resize(np.arange(n), pad)
        outs = []
        for start in range(0, pad, CHUNK):
            part = jax.tree_util.tree_map(lambda a, s=start: a[idx[s:s + CHUNK]], items)
            if vmappable[0]:
                try:
                    outs.append(np.asarray(vf(*fixed, *part)))
                    continue
                except Exception:  # noqa: BLE001  (a forward that cannot be vmapped: one item at a time from now on)
                    vmappable[0] = False
            outs.append(np.stack([np.asarray(one(*fixed, *jax.tree_util.tree_map(lambda a, i=i: a[i], part)))
                                  for i in range(CHUNK)]))
        return np.concatenate(outs)[:n]

    return run


class Line(NamedTuple):
    """fn's forward along lines through the float64 point x, batched (each a compiled program, built once).

    ``phi(U, V, S)``: <u, f(x + s v)> for stacked (u, v, s); ``out(V, S)``: f(x + s v) flattened;
    ``at(X, U)``: <u, f(x')> at another point x' (a rounding neighbour) for stacked u; ``coordinate(leaf, scale)``:
    ``(u, C, S) -> <u, f(x + s scale e_c)>`` over the entries c of one leaf; ``value(X)``: f(x') flattened at
    another point; ``eps``: the working precision's eps.
    """

    phi: object
    out: object
    at: object
    coordinate: object
    value: object
    x: list
    eps: float


def line(g, x: list, eps: float) -> Line:
    """The batched evaluations of ``g`` (a function of the list of differentiable leaves) around ``x``."""

    def dot(u, y):
        return sum(jnp.vdot(jnp.asarray(a, jnp.float64).ravel(), jnp.asarray(b, jnp.float64).ravel())
                   for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(y))
                   if jnp.issubdtype(b.dtype, jnp.inexact))

    def flat(y):
        return jnp.concatenate([jnp.asarray(b, jnp.float64).ravel() for b in jax.tree_util.tree_leaves(y)
                                if jnp.issubdtype(b.dtype, jnp.inexact)])

    def shifted(x, v, s):
        return g([a + (s * d).astype(a.dtype) for a, d in zip(x, v)])

    phi = batched(lambda x, u, v, s: dot(u, shifted(x, v, s)), 1, 3)
    out = batched(lambda x, v, s: flat(shifted(x, v, s)), 1, 2)
    value = jax.jit(lambda x: flat(g(x)))
    zeros = [np.zeros(np.shape(a)) for a in x]

    def at(X, U):  # phi's own program, at another point, with no step
        n = len(jax.tree_util.tree_leaves(U)[0])
        return phi(X, U, _stack([zeros] * n), np.zeros(n))

    coordinates = {}

    def coordinate(leaf: int, scale: float):
        if leaf not in coordinates:
            def along(x, u, c, s):
                moved = list(x)
                moved[leaf] = x[leaf].ravel().at[c].add(s * scale).reshape(x[leaf].shape)
                return dot(u, g(moved))

            coordinates[leaf] = batched(along, 2, 2)
        run = coordinates[leaf]
        return lambda u, C, S: run(x, u, C, S)

    return Line(lambda U, V, S: phi(x, U, V, S), lambda V, S: out(x, V, S), at, coordinate,
                lambda X: np.asarray(value(X)), x, eps)


def _stack(trees: list):
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *trees)


def directions(x: list, masks: list, leaf: int, count: int, rng) -> list:
    """``count`` random directions over leaf ``leaf`` only (zero elsewhere and on excluded entries), each entry's
    scale that of the leaf (the root mean square of its compared entries, or 1 where those are 0)."""
    a = np.asarray(x[leaf], np.float64)
    keep = np.ones(a.shape, bool) if masks[leaf] is None else masks[leaf]
    scale = float(np.sqrt(np.mean(a[keep] ** 2))) if keep.any() else 1.0
    scale = scale if scale > 0 else 1.0
    out = []
    for _ in range(count):
        v = [np.zeros(np.shape(b)) for b in x]
        v[leaf] = rng.standard_normal(a.shape) * keep * scale
        out.append(v)
    return out


def noise(ln: Line, us: list, samples: int = FINITE_DIFFERENCE_MODEL.samples, seed: int = 0) -> tuple:
    """(phi(0) for each cotangent, its rounding noise): the spread of phi over points one rounding step (of the
    working precision) away, at least 2 u |phi(0)|."""
    U = _stack(us)
    f0 = ln.at(ln.x, U)
    spread = [np.abs(ln.at(move(ln.x, seed + i, ln.eps), U) - f0) for i in range(samples)]
    return f0, np.maximum(ln.eps * np.abs(f0), np.max(spread, axis=0))


def _dots(cotangent: list, v: list) -> tuple:
    """<J^T u, v> and <|J^T u|, |v|> in float64 over the leaves."""
    pairs = [(np.asarray(c, np.float64), np.asarray(d, np.float64)) for c, d in zip(cotangent, v)]
    return float(sum(np.sum(c * d) for c, d in pairs)), float(sum(np.sum(np.abs(c * d)) for c, d in pairs))


def _run_lines(ln: Line, us, vs):
    """``refine``'s ``run(h, idx)``: phi at STEPS x h along each (u, v) item (no kinks declared: central only)."""

    def run(h, idx):
        items = [(us[i], vs[i], r * h) for i in idx for r in STEPS]
        vals = ln.phi(_stack([u for u, _, _ in items]), _stack([v for _, v, _ in items]),
                      np.array([s for _, _, s in items]))
        vals = vals.reshape(len(idx), len(STEPS)).T
        ones = np.ones(len(idx), bool)
        return vals, ones, ones, ones, ~ones

    return run


def fd_rows(name: str, ln: Line, labels: list, masks: list, us: list, pulls: list, k: int, tol, rng,
            noisy: tuple) -> list:
    """Per differentiable leaf: <J^T u_i, v_i> (fn's VJP) against the finite difference of phi_i, i < k.

    Returns [(row, fn's values, the finite difference's)]."""
    out = []
    f0, sigma = noisy
    for leaf, label in enumerate(labels):
        if masks[leaf] is not None and not masks[leaf].any():
            out.append((not_compared_row(name, label, "excluded: every entry excluded by where=",
                                         np.shape(ln.x[leaf])), None, None))
            continue
        vs = directions(ln.x, masks, leaf, k, rng)
        value, error, lo, hi, kind = refine(_run_lines(ln, us[:k], vs), k, f0, H, sigma)
        analytic, absolute = np.array([_dots(pulls[i], vs[i]) for i in range(k)]).T
        error = error + DOT_ROUNDING * ln.eps * absolute  # the rounding of <J^T u, v> itself
        note = f"{k} random direction{'s' * (k > 1)}" + _excluded(masks[leaf])
        row = judge(name, label, analytic, FiniteDifference(value, error, lo, hi, kind), tol,
                    rule=Rule.FINITE_DIFFERENCE, note=note, manual_name="fn")
        out.append((_shaped(row, np.shape(ln.x[leaf])), analytic, value))
    return out


def exhaustive_rows(name: str, ln: Line, labels: list, masks: list, us: list, pulls: list, k: int, tol,
                    noisy: tuple) -> list:
    """Per differentiable leaf: every coordinate's finite difference for each of the k cotangents: the whole J^T u_i."""
    total = sum(int(np.size(a)) for a in ln.x) * k
    if total > EXHAUSTIVE_LIMIT:
        raise ValueError(f"check_vjp: mode='exhaustive' needs 6 forward passes per input entry and cotangent: "
                         f"{total} entries x cotangents here (limit {EXHAUSTIVE_LIMIT}); use mode='directions'")
    f0, sigma = noisy
    out = []
    for leaf, label in enumerate(labels):
        a = np.asarray(ln.x[leaf], np.float64)
        keep = np.ones(a.shape, bool) if masks[leaf] is None else masks[leaf]
        if not keep.any():
            out.append((not_compared_row(name, label, "excluded: every entry excluded by where=", a.shape), None, None))
            continue
        scale = float(np.sqrt(np.mean(a[keep] ** 2))) or 1.0
        phi_c = ln.coordinate(leaf, scale)
        values, errors, manual = [], [], []
        for i in range(k):
            def run(h, idx, i=i, phi_c=phi_c):
                vals = phi_c(us[i], np.repeat(idx, len(STEPS)), np.tile(np.array(STEPS) * h, len(idx)))
                ones = np.ones(len(idx), bool)
                return vals.reshape(len(idx), len(STEPS)).T, ones, ones, ones, ~ones

            value, error, _, _, _ = refine(run, a.size, f0[i], H, sigma[i])
            m = np.asarray(pulls[i][leaf], np.float64).ravel()
            values.append(value / scale)
            errors.append(error / scale + DOT_ROUNDING * ln.eps * np.abs(m))
            manual.append(m)
        shape = (k, *a.shape)
        m, v, e = (np.reshape(np.stack(t), shape) for t in (manual, values, errors))
        v = np.where(np.broadcast_to(keep, shape), v, m)  # excluded coordinates agree by construction (counted)
        row = judge(name, label, m, FiniteDifference(v, e, v, v, np.full(shape, CENTRAL)), tol,
                    rule=Rule.FINITE_DIFFERENCE, note=f"every coordinate, {k} cotangent{'s' * (k > 1)}"
                    + _excluded(masks[leaf]), manual_name="fn")
        out.append((_shaped(row, a.shape), m, v))
    return out


def taylor_rows(name: str, ln: Line, labels: list, masks: list, us: list, pulls: list, rng, noisy: tuple) -> list:
    """Per differentiable leaf: the Taylor test of <J^T u_0, v> along one random direction v over that leaf.

    ``noisy``: ``noise(ln, us)``, phi(0) and its noise for each cotangent (the first is used)."""
    out = []
    hs = taylor.steps()
    f0, sigma = noisy
    for leaf, label in enumerate(labels):
        if masks[leaf] is not None and not masks[leaf].any():
            out.append((not_compared_row(name, f"{label} taylor", "excluded: every entry excluded by where=",
                                         np.shape(ln.x[leaf])), None, None))
            continue
        (v,) = directions(ln.x, masks, leaf, 1, rng)
        g, absolute = _dots(pulls[0], v)
        phis = ln.phi(_stack([us[0]] * len(hs)), _stack([v] * len(hs)), hs)
        data = taylor.Taylor(hs, phis - f0[0], 2 * sigma[0] + DOT_ROUNDING * ln.eps * hs * absolute)
        row = judge(name, f"{label} taylor", np.float64(g), data, None, rule=Rule.TAYLOR,
                    note=_excluded(masks[leaf]).removeprefix("; "))
        out.append((_shaped(row, np.shape(ln.x[leaf])), np.float64(g), data))
    return out


def _excluded(mask) -> str:
    if mask is None:
        return ""
    return f"; {int(mask.size - mask.sum())} of {mask.size} entries excluded (where=)"


def _shaped(row, shape):
    """The row shown with the input's shape (its values may be k directional derivatives)."""
    return dataclasses.replace(row, shape=tuple(shape))
