"""Finite differences: the numerical gradient of the seeds, against manual backprop.

Central differences in float64,

.. math::
    \\frac{\\partial C}{\\partial w_j} \\approx \\frac{C(w + \\epsilon e_j) - C(w - \\epsilon e_j)}{2 \\epsilon},

with truncation error O(eps^2) and rounding error O(1e-16 |C| / eps).

Two modes:
  * ``"directions"``: k random unit directions v (over all parameters at once,
    and k over the input); compares (C(w + eps v) - C(w - eps v)) / 2 eps with
    <grad C, v>. Costs 2k forward passes whatever the parameter count.
  * ``"exhaustive"``: every coordinate e_j, 2 forward passes per parameter
    (run batched with ``lax.map``, not a Python loop). For small models: the
    numerical gradient is what backprop saves us from (Nielsen, ch. 2: a
    forward pass per parameter, against one forward and one backward for all).

A step of +/-eps that changes a discrete choice of the forward (a ReLU's
sign, a max-pool's winner: a layer's ``kink_pattern``) makes the quotient
meaningless there; such a row or coordinate is reported as "kink crossed"
and not counted as a failure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manualbp.backprop import loss_and_grads
from manualbp.layers.base import check_finite, children_of, name_of
from manualbp.verify.report import Report, compare_arrays, param_name
from manualbp.verify.tolerances import FINITE_DIFFERENCE
from manualbp.verify.trace import label, walk


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda v: v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree
    )


def _pattern(model, cache):
    if not hasattr(model, "kink_pattern"):
        return ()
    return tuple(jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(model.kink_pattern(cache)))


def _loss_and_pattern(model, head, params, x, y, mask):
    out, cache = model.forward(params, x)
    return head.forward(out, y, mask)[0], _pattern(model, cache)


def _kinked(p0, pa, pb):
    """True where the forward's discrete choices at w +/- eps differ from those at w."""
    changed = jnp.bool_(False)
    for a, b, c in zip(p0, pa, pb):
        changed = changed | jnp.any(a != b) | jnp.any(a != c)
    return changed


def _unit(key, tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    vs = [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)]
    norm = jnp.sqrt(sum(jnp.sum(v * v) for v in vs))
    return jax.tree_util.tree_unflatten(treedef, [v / norm for v in vs])


def _dot(a, b):
    return sum(jnp.sum(u * v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def gradcheck(model, head, params, x, y, mask=None, *, mode: str = "directions", k: int = 8, eps: float = 1e-6,
              key=None, max_params: int = 20_000) -> Report:
    """Manual backprop vs central finite differences, in float64.

    Args:
      model, head, params, x, y, mask: as for ``compare`` (converted to float64).
      mode: "directions" (k random directions in parameter space and k in
        input space) or "exhaustive" (every parameter coordinate).
      k: number of random directions.
      eps: the finite-difference step.
      key: PRNG key for the directions (default key 0).
      max_params: exhaustive mode refuses models with more parameters.

    Returns:
      A ``Report`` with tolerance ``tolerances.FINITE_DIFFERENCE``.
    """
    if mode not in ("directions", "exhaustive"):
        raise ValueError(f"gradcheck: mode must be 'directions' or 'exhaustive', got {mode!r}")
    if k < 1:
        raise ValueError(f"gradcheck: k must be >= 1, got {k}")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be > 0, got {eps}")
    key = jax.random.key(0) if key is None else key
    with jax.enable_x64(True):
        params, x, y, mask = _to64((params, jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(y), mask))
        check_finite(name_of(model), "input x", x)
        check_finite(name_of(model), "params", params)
        _, grads, dx, _ = jax.jit(lambda p, x: loss_and_grads(model, head, p, x, y, mask))(params, x)
        title = f"manualbp vs finite differences ({mode}, eps={eps:g}): {name_of(model)} + {name_of(head)}"
        report = Report(title, "float64", FINITE_DIFFERENCE)
        if mode == "directions":
            _directions(report, model, head, params, x, y, mask, grads, dx, k, eps, key)
        else:
            _exhaustive(report, model, head, params, x, y, mask, grads, eps, max_params)
    return report


def _directions(report, model, head, params, x, y, mask, grads, dx, k, eps, key):
    f = jax.jit(lambda p, x: _loss_and_pattern(model, head, p, x, y, mask))
    _, p0 = f(params, x)
    x_float = all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree_util.tree_leaves(x))
    for i, kk in enumerate(jax.random.split(key, k)):
        kp, kx = jax.random.split(kk)
        cases = [("params", _unit(kp, params), grads)]
        if x_float and dx is not None:
            cases.append(("x", _unit(kx, x), dx))
        for what, v, g in cases:
            def shift(s, what=what, v=v):
                """(params, x) moved by s along v in the space named by ``what``."""
                moved = jax.tree_util.tree_map(lambda a, b: a + s * b, params if what == "params" else x, v)
                return (moved, x) if what == "params" else (params, moved)

            lp, pa = f(*shift(eps))
            lm, pb = f(*shift(-eps))
            numeric = (lp - lm) / (2 * eps)
            analytic = _dot(g, v)
            kink = bool(_kinked(p0, pa, pb))
            row = compare_arrays("model " + name_of(model), f"dL/d{what} . v{i}", analytic, numeric, report.tolerance,
                                 note="kink crossed (not compared)" if kink else "")
            if kink:
                row.ok = True
            report.rows.append(row)


def _exhaustive(report, model, head, params, x, y, mask, grads, eps, max_params):
    theta, unravel = ravel_pytree(params)
    n = theta.size
    if n > max_params:
        raise ValueError(
            f"gradcheck: exhaustive mode needs 2 forward passes per parameter; the model has {n} parameters "
            f"(max_params={max_params}); use mode='directions'"
        )

    def at(t):
        return _loss_and_pattern(model, head, unravel(t), x, y, mask)

    _, p0 = jax.jit(at)(theta)

    @jax.jit
    def column(j):
        e = jnp.zeros_like(theta).at[j].set(eps)
        lp, pa = at(theta + e)
        lm, pb = at(theta - e)
        return (lp - lm) / (2 * eps), _kinked(p0, pa, pb)

    numeric, kinked = jax.lax.map(column, jnp.arange(n), batch_size=min(n, 256))
    g_flat, _ = ravel_pytree(grads)
    numeric = jnp.where(kinked, g_flat, numeric)  # a crossed kink is not compared
    num_tree, kink_tree = unravel(numeric), unravel(kinked.astype(theta.dtype))
    for (path, layer, gm), (_, _, gn), (_, _, kt) in zip(walk(model, grads), walk(model, num_tree),
                                                          walk(model, kink_tree)):
        if children_of(layer):
            continue
        for (kp, m), nv, kv in zip(jax.tree_util.tree_leaves_with_path(gm), jax.tree_util.tree_leaves(gn),
                                   jax.tree_util.tree_leaves(kt)):
            crossed = int(np.sum(np.asarray(kv)))
            note = f"kink crossed at {crossed} coordinate(s), not compared" if crossed else ""
            report.rows.append(compare_arrays(label(path, layer), param_name(kp), m, nv, report.tolerance, note))
