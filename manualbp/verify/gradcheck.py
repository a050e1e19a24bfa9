"""Finite differences: the numerical gradient of the seeds, against manual backprop.

Central differences in float64,

.. math::
    \\frac{\\partial C}{\\partial w_j} \\approx \\frac{C(w + h e_j) - C(w - h e_j)}{2 h},

at two steps h and h/2, extrapolated (Richardson), with an error estimate from the two steps
(truncation) and from the measured rounding noise of C (rounding ~ sigma / h): see
``finite_differences``. A row passes within the fixed ``FINITE_DIFFERENCE`` tolerance, or,
where the estimated error of the finite difference makes that tolerance unreachable (a small
directional derivative, a noisy loss), within ``FINITE_DIFFERENCE_MODEL.conditioning`` times
that error (``verdict.judge``, verdict "conditioning").

Two modes:
  * ``"directions"``: k random unit directions v (over all parameters at once,
    and k over the input); compares the derivative of C along v with <grad C, v>.
    Costs 12k forward passes whatever the parameter count.
  * ``"exhaustive"``: every coordinate e_j, 6 forward passes per parameter
    (run batched with ``lax.map``, not a Python loop). For small models: the
    numerical gradient is what backprop saves us from (Nielsen, ch. 2: a
    forward pass per parameter, against one forward and one backward for all).

Kinks (a step that changes a discrete choice of the forward: a ReLU's sign, a max-pool winner,
a layer's ``kink_pattern``): the side whose choices are those at w gives a one-sided derivative,
which the manual value must equal (so a ReLU'(0) = 1 bug at an exact kink fails); a single kink
crossed on both sides gives the subgradient check (the manual value between the left and right
derivatives); several kinks on both sides cannot be compared, and a report whose rows were all
uncompared is INCONCLUSIVE, not a PASS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manualbp.backprop import as_inputs, check_values, loss_and_grads
from manualbp.layers.arguments import as_key, check_count, check_head_object, check_layer_object, check_number
from manualbp.layers.base import as_array, check_finite, children_of, name_of
from manualbp.layers.walk import MissingDx, gradient_mismatches, param_name
from manualbp.verify import forensics
from manualbp.verify.finite_differences import CENTRAL, KINDS, NONE, STEPS, refine
from manualbp.verify.forensics import context_for
from manualbp.verify.precision import full_precision
from manualbp.verify.report import Report
from manualbp.verify.rounding import cast, move
from manualbp.verify.tolerances import FINITE_DIFFERENCE, FINITE_DIFFERENCE_MODEL, Rule
from manualbp.verify.trace import label, walk
from manualbp.verify.verdict import MISSING, FiniteDifference, judge, structure_row

_U = float(np.finfo(np.float64).eps) / 2  # unit roundoff of float64
_KINDS = np.asarray(KINDS)


def _pattern(model, cache):
    if not getattr(model, "kink_pattern", None):
        return ()
    return tuple(jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(model.kink_pattern(cache)))


def _loss_and_pattern(model, head, params, x, y, mask):
    out, cache = model.forward(params, x)
    return head.forward(out, y, mask)[0], _pattern(model, cache)


def _along(model, head, y, mask, p0):
    """phi(s) = C(w + s v) at s = STEPS x h, and how the forward's choices there compare with ``p0`` (those at s = 0)."""

    def shift(tree, v, s):
        return jax.tree_util.tree_map(lambda a, b: a + s * b if jnp.issubdtype(a.dtype, jnp.floating) else a, tree, v)

    def same(a, b):
        return jnp.all(jnp.array([jnp.all(u == w) for u, w in zip(a, b)] or [True]))

    def line(params, x, vp, vx, h):
        vals, pats = zip(*[_loss_and_pattern(model, head, shift(params, vp, r * h), shift(x, vx, r * h), y, mask)
                           for r in STEPS])
        right, left = pats[:3], pats[3:]
        changed = sum(jnp.sum(jnp.any(jnp.stack([p[i] != z for p in pats]), axis=0)) for i, z in enumerate(p0))
        return (jnp.stack(vals), jnp.all(jnp.array([same(p, p0) for p in right])),
                jnp.all(jnp.array([same(p, p0) for p in left])),
                same(right[0], right[1]) & same(right[1], right[2]) & same(left[0], left[1]) & same(left[1], left[2]),
                jnp.asarray(changed) == 1)

    return line


def _noise(f, c0, params, x, samples=FINITE_DIFFERENCE_MODEL.samples):
    """The rounding noise of the loss: its spread over points one rounding step away (at least 2u |C|)."""
    spread = [abs(float(f(*move((params, x), seed, 2 * _U))) - c0) for seed in range(samples)]
    return max([2 * _U * abs(c0), *spread])


def _unit(rng, tree):
    """A random direction of unit norm over the floating leaves of ``tree`` (zeros on the others), drawn with
    NumPy: nothing is compiled, where jax.random would compile one program per leaf shape."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    vs = [rng.standard_normal(v.shape) if jnp.issubdtype(v.dtype, jnp.floating) else np.zeros(v.shape, v.dtype)
          for v in leaves]
    norm = np.sqrt(sum(np.sum(v * v) for v, leaf in zip(vs, leaves) if jnp.issubdtype(leaf.dtype, jnp.floating)))
    return jax.tree_util.tree_unflatten(treedef, [
        jax.device_put((v / norm).astype(leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else v)
        for v, leaf in zip(vs, leaves)])


def _has_floats(tree) -> bool:
    return any(jnp.issubdtype(v.dtype, jnp.floating) and v.size for v in jax.tree_util.tree_leaves(tree))


def _dot(a, b):
    """<a, b> and <|a|, |b|> over the floating leaves, in float64 on the host."""
    pairs = [(np.asarray(u, np.float64), np.asarray(v, np.float64))
             for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)) if jnp.issubdtype(u.dtype, jnp.floating)]
    return float(sum(np.sum(u * v) for u, v in pairs)), float(sum(np.sum(np.abs(u * v)) for u, v in pairs))


def _zeros(tree):
    """Zeros shaped like every leaf of ``tree``, made on the host (an eager zeros_like compiles per shape)."""
    return jax.tree_util.tree_map(lambda v: jax.device_put(np.zeros(v.shape, v.dtype)), tree)


@full_precision
def gradcheck(model, head, params, x, y, mask=None, *, mode: str = "directions", k: int = 8, eps: float = 1e-4,
              key=None, max_params: int = 20_000) -> Report:
    """Manual backprop vs finite differences in float64, with an error estimate for every comparison.

    Args:
      model, head, params, x, y, mask: as for ``compare`` (converted to float64).
      mode: "directions" (k random directions in parameter space and k in
        input space) or "exhaustive" (every parameter coordinate).
      k: number of random directions.
      eps: the larger of the two steps h (the other is h/2); the error estimate, not this
        number, sets what a row is allowed.
      key: PRNG key for the directions (default key 0; its bits seed NumPy's generator, which draws them).
      max_params: exhaustive mode refuses models with more parameters.

    Returns:
      A ``Report`` (tolerance ``FINITE_DIFFERENCE``) whose rows carry the finite difference's
      estimated error (``err_ref``) and, for rows at kinks, how they were compared (``note``).

    Raises, before any verdict, what ``compare`` raises for a bad model, head or input (the
    messages of ``value_and_grad``), and for a bad mode, k, eps, key or max_params.
    """
    check_layer_object("gradcheck", model)
    check_head_object("gradcheck", head)
    if mode not in ("directions", "exhaustive"):
        raise ValueError(f"gradcheck: mode must be 'directions' or 'exhaustive', got {mode!r}")
    check_count("gradcheck", "k", k)
    check_number("gradcheck", "eps", eps, low=0, low_open=True)
    check_count("gradcheck", "max_params", max_params)
    key = jax.random.key(0) if key is None else as_key("gradcheck", key)
    x, y, mask = as_inputs(x, y, mask, where="gradcheck")
    with jax.enable_x64(True):
        params, x, y, mask = cast((params, x, y, mask), jnp.float64)
        check_finite(name_of(model), "input x", x)
        check_finite(name_of(model), "params", params)
        check_values(model, head, params, x, y, mask)  # a bad input is refused, never a failing row
        try:
            _, grads, dx, _ = jax.jit(lambda p, x: loss_and_grads(model, head, p, x, y, mask))(params, x)
        except MissingDx as e:  # no manual gradient of the model to compare: the one row that says why
            report = Report(f"manualbp vs finite differences ({mode}): {name_of(model)} + {name_of(head)}", "float64",
                            FINITE_DIFFERENCE, verdict=Rule.FINITE_DIFFERENCE, reference="the finite difference")
            report.rows.append(structure_row(e.label, "dL/dx", MISSING, str(e)))
            report.set_diagnoser(forensics.diagnoser(report.rows, None, None))  # a structure row: its own note
            return report
        structure = [structure_row(m.layer, m.name, m.kind, m.detail) for m in gradient_mismatches(model, params, grads)]
        grads = _aligned(params, grads)
        if _has_floats(x) and _missing(dx, x):
            structure.append(structure_row("model " + name_of(model), "dL/dx", MISSING,
                                           "the backward returned no dL/dx (None) for a floating input"))
        dx = _aligned(x, dx)
        f = jax.jit(lambda p, x: _loss_and_pattern(model, head, p, x, y, mask))
        f0, p0 = f(params, x)
        sigma = _noise(lambda p, x: f(p, x)[0], float(f0), params, x)
        title = f"manualbp vs finite differences ({mode}, h={eps:g}, h/2, h/4): {name_of(model)} + {name_of(head)}"
        report = Report(title, "float64", FINITE_DIFFERENCE, verdict=Rule.FINITE_DIFFERENCE,
                        error_model=FINITE_DIFFERENCE_MODEL, reference="the finite difference")
        report.rows.extend(structure)
        line = _along(model, head, y, mask, p0)
        values, layers = {}, {}  # row index -> (manual, the finite difference's estimate), the row's layer
        if mode == "directions":
            _directions(report, values, model, line, params, x, grads, dx, k, eps, float(f0), sigma, key)
        else:
            _exhaustive(report, values, layers, model, line, params, x, grads, eps, float(f0), sigma, max_params)
    batch = next((int(v.shape[0]) for v in jax.tree_util.tree_leaves(x) if np.ndim(v)), None)
    report.set_diagnoser(forensics.diagnoser(
        report.rows, lambda i: values.get(i, (np.nan, np.nan)),
        lambda i: context_for(layers.get(i, model), np.shape(values.get(i, (0, 0))[1]), batch=batch, is_param=True)))
    return report


def _judge(layer, quantity, manual, manual_abs, value, error, lo, hi, kind, note=""):
    """One row: the manual value against the finite difference's estimate (``Rule.FINITE_DIFFERENCE``).

    The estimate's error grows by the float64 rounding of the analytic dot product <grad, v> itself.
    """
    error = error + 4 * _U * np.asarray(manual_abs, np.float64)
    return judge(layer, quantity, np.asarray(manual, np.float64), FiniteDifference(value, error, lo, hi, kind),
                 FINITE_DIFFERENCE, rule=Rule.FINITE_DIFFERENCE, note=note)


def _is_none(v) -> bool:
    return v is None


def _by_path(tree) -> dict:
    return {jax.tree_util.keystr(kp): v for kp, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]}


def _aligned(like, tree):
    """``tree`` as a tree of ``like``'s structure: its leaf where it has one of the right shape, zeros elsewhere.

    A gradient the backward left out (reported as a "missing" row) then adds nothing to <grad, v>.
    """
    got = _by_path(tree)

    def leaf(kp, v):
        g = got.get(jax.tree_util.keystr(kp))
        ok = g is not None and np.shape(g) == np.shape(v)
        return g if ok else jax.device_put(np.zeros(np.shape(v), v.dtype))

    return jax.tree_util.tree_map_with_path(leaf, like)


def _missing(dx, x) -> bool:
    """Whether a floating leaf of ``x`` has no gradient (None, or absent) in ``dx``."""
    got = _by_path(dx)
    return any(got.get(jax.tree_util.keystr(kp)) is None
               for kp, v in jax.tree_util.tree_leaves_with_path(x) if jnp.issubdtype(v.dtype, jnp.floating))


def _directions(report, values, model, line, params, x, grads, dx, k, h, f0, sigma, key):
    """k directions in parameter space and k over the floating leaves of x (a tuple input's too: (x, lengths))."""
    line = jax.jit(line)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    for i in range(k):
        cases = [("params", _unit(rng, params), _zeros(x), grads)] if _has_floats(params) else []
        if _has_floats(x):
            vx = _unit(rng, x)
            cases.append(("x", _zeros(params), vx, dx))
        for what, vp, vx, g in cases:
            def run(step, idx, vp=vp, vx=vx):
                del idx
                vals, *flags = line(params, x, vp, vx, step)
                return np.asarray(vals)[:, None], *(np.asarray(f)[None] for f in flags)

            value, error, lo, hi, kind = (a[0] for a in refine(run, 1, f0, h, sigma))
            analytic, analytic_abs = _dot(vp if what == "params" else vx, g)
            kind_s = str(kind)
            note = "" if kind_s == "central" else f"kink: {kind_s}" + (
                " (kinks crossed on both sides; try mode='exhaustive')" if kind_s == NONE else "")
            report.rows.append(_judge("model " + name_of(model), f"dL/d{what} . v{i}", analytic, analytic_abs,
                                      value, error, lo, hi, kind, note))
            values[len(report.rows) - 1] = (analytic, value)


def _exhaustive(report, values, layers, model, line, params, x, grads, h, f0, sigma, max_params):
    theta, unravel = ravel_pytree(params)
    n = theta.size
    if n > max_params:
        raise ValueError(
            f"gradcheck: exhaustive mode needs 6 forward passes per parameter; the model has {n} parameters "
            f"(max_params={max_params}); use mode='directions'"
        )
    zx = _zeros(x)
    chunk = min(n, 256)
    columns = jax.jit(jax.vmap(lambda j, step: line(params, x, unravel(jnp.zeros_like(theta).at[j].set(1.0)), zx, step),
                               in_axes=(0, None)))

    def run(step, idx):
        """The line outputs for coordinates idx, ``chunk`` at a time (one compiled shape)."""
        pad = np.resize(idx, -(-idx.size // chunk) * chunk)
        outs = [columns(as_array(pad[i:i + chunk]), step) for i in range(0, pad.size, chunk)]
        vals, *flags = (np.concatenate([np.asarray(o[j]) for o in outs])[: idx.size] for j in range(5))
        return vals.T, *flags

    value, error, lo, hi, kind = refine(run, n, f0, h, sigma)
    code = np.select([kind == kd for kd in KINDS], np.arange(len(KINDS)), 0).astype(np.float64)  # kinds as numbers
    trees = [walk(model, unravel(jnp.asarray(a))) for a in (value, error, lo, hi, code)]
    for (path, layer, gm), *rest in zip(walk(model, grads), *trees):
        if children_of(layer):
            continue
        leaves = [jax.tree_util.tree_leaves(t[2]) for t in rest]
        for (kp, m), v, e, lo_, hi_, c in zip(jax.tree_util.tree_leaves_with_path(gm), *leaves):
            kinds = _KINDS[np.asarray(c).astype(int)]
            counts = {kd: int(np.sum(kinds == kd)) for kd in np.unique(kinds) if kd != CENTRAL}
            note = ("kink at " + ", ".join(f"{v_} coordinate(s): {kd}" for kd, v_ in counts.items())) if counts else ""
            m = np.asarray(m)
            report.rows.append(_judge(label(path, layer), param_name(kp), m, np.abs(m), np.asarray(v), np.asarray(e),
                                      np.asarray(lo_), np.asarray(hi_), kinds, note))
            values[len(report.rows) - 1] = (m, np.asarray(v))
            layers[len(report.rows) - 1] = layer
