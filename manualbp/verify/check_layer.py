"""One layer alone, manual forward/backward vs ``jax.vjp`` of a reference forward: ``check_layer``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import reference as ref
from manualbp.layers.arguments import as_key, check_callable, check_flag, check_layer_object
from manualbp.layers.base import as_array, as_arrays, check_finite, describe, name_of
from manualbp.verify import forensics
from manualbp.verify.compare import by_kind, dtype_of, judge_all
from manualbp.verify.forensics import context_for
from manualbp.verify.precision import full_precision
from manualbp.verify.quantities import param_name, union
from manualbp.verify.report import Report
from manualbp.verify.rounding import choices, measure, precise_truth
from manualbp.verify.tolerances import ERROR_MODEL, resolve_verdict, tolerance
from manualbp.verify.vjp_inputs import describe_tree


def _as_arrays(params, x):
    """numpy arrays and Python numbers as jax arrays; a Python number in params takes x's floating dtype."""
    try:
        x = as_arrays(x)
    except (TypeError, ValueError):
        raise TypeError(f"check_layer: expected x as arrays of numbers, got {describe(x)}") from None
    floats = [leaf.dtype for leaf in jax.tree_util.tree_leaves(x) if jnp.issubdtype(leaf.dtype, jnp.floating)]

    def leaf(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and floats:
            return jax.device_put(np.asarray(v, floats[0]))
        return as_array(v)

    return jax.tree_util.tree_map(leaf, params), x


def _shapes(tree):
    return jax.tree_util.tree_map(lambda v: (tuple(v.shape), np.dtype(v.dtype).name), tree)


def _check_shapes(name, what, got, expected, hint):
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(expected) or _shapes(got) != _shapes(expected):
        fmt = lambda t: jax.tree_util.tree_map(lambda v: describe(v), t)  # noqa: E731
        raise ValueError(f"check_layer: {name}: {what} {fmt(got)}, but the layer's forward returns y {fmt(expected)}; {hint}")


def _values(y, dparams, dx) -> dict:
    out = {("y", k): v for k, v in by_kind("y", y).items()}
    if dx is not None:
        out.update({("dx", k): v for k, v in by_kind("x", dx).items()})
    out.update({("param", param_name(kp)): v for kp, v in jax.tree_util.tree_leaves_with_path(dparams)})
    return out


def _choices(layer):
    try:
        return choices(layer)
    except TypeError:  # an unhashable user layer: the float32 estimate alone
        return None


@full_precision
def check_layer(layer, params, x, dy=None, *, reference=None, key=None, jit: bool = False,
                title: str | None = None, verdict: str = "auto") -> Report:
    """One layer alone: manual forward/backward vs ``jax.vjp`` of the reference forward.

    Args:
      layer: a manualbp layer, or a user's own object with
        ``forward(params, x) -> (y, cache)`` and
        ``backward(params, cache, dy) -> (dparams, dx)``.
      params, x: the point to check at (arrays, numpy arrays or Python numbers; a Python
        number in params takes x's floating dtype).
      dy: the cotangent, shaped like the layer's output; if None, a standard normal one drawn
        with NumPy, seeded by ``key``'s bits (default ``jax.random.key(0)``).
      reference: ``fn(params, x) -> y`` written with library ops; defaults
        to the reference forward registered for ``type(layer)``.
      jit: run the manual forward and backward under ``jax.jit`` (the reference's ``jax.vjp``
        always runs compiled: one program, where run eagerly it would compile one per operation).
      verdict: as for ``compare`` ("auto", "fixed", "conditioning", "error-model").

    Rows: forward y, dL/dx, and one per parameter gradient.

    Raises ValueError (naming the layer) for NaN/Inf in params, x or dy, a dy not shaped like
    the output, a reference whose output is not shaped like the layer's, or invalid input values
    (``layer.check_input``: ids or lengths out of range); TypeError for a layer that is not one, a
    reference that is not a function, or a key that is not a PRNG key.
    """
    check_layer_object("check_layer", layer, "layer")
    if reference is not None:
        check_callable("check_layer", "reference", reference, "(params, x) -> y")
    check_flag("check_layer", "jit", jit)
    key = None if key is None else as_key("check_layer", key)
    name = name_of(layer)
    params, x = _as_arrays(params, x)
    check_finite(name, "input x", x)
    check_finite(name, "params", params)
    if hasattr(layer, "check_input"):
        layer.check_input(params, x)
    y_shape = jax.eval_shape(lambda p, x: layer.forward(p, x)[0], params, x)
    fn = reference if reference is not None else (lambda p, x: ref.forward(layer, p, x, ref.NoTaps()))
    _check_shapes(name, "the reference returns", jax.eval_shape(fn, params, x), y_shape,
                  "the reference must compute the same function as the layer")
    if dy is None:  # drawn with NumPy, seeded by the key: jax.random would compile a sampler per output shape
        key = jax.random.key(0) if key is None else key
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
        dy = jax.tree_util.tree_map(lambda v: rng.standard_normal(v.shape).astype(v.dtype), y_shape)
    dy = as_arrays(dy)
    _check_shapes(name, "dy is", dy, y_shape, "dy is dL/dy, one entry per output entry")
    check_finite(name, "dy", dy)

    def manual(params, x, dy):
        y, cache = layer.forward(params, x)
        return (y, *layer.backward(params, cache, dy))

    y, dparams, dx = (jax.jit(manual) if jit else manual)(params, x, dy)
    m_values = _values(y, dparams, dx)
    # the reference always runs compiled (eval_shape above has traced it already): one program, where an
    # eager jax.vjp compiles one per primitive of the forward and of its transpose
    vjp = jax.jit(lambda p, x, dy: _values(*ref.vjp_layer(fn, p, x, dy)))
    r_values = vjp(params, x, dy)
    dtype = dtype_of(params, x)
    tol = tolerance(dtype)
    verdict = resolve_verdict(verdict, dtype, "check_layer")
    rows = [(name, ("forward " if k[0] == "y" else "dL/d" if k[0] == "dx" else "") + k[1], k, None)
            for k in union(m_values, r_values)]
    rows = [r for r in rows if r[2][0] == "y"] + [r for r in rows if r[2][0] == "dx"] + [r for r in rows if r[2][0] == "param"]
    report = Report(title or f"check_layer: {name} vs jax.vjp", dtype.name, tol, verdict=verdict)
    tree = ("" if jax.tree_util.tree_structure(dparams) == jax.tree_util.tree_structure(params) else
            f" (the backward returned dparams {describe_tree(dparams)}, params are {describe_tree(params)})")

    def why(key):
        if key[0] == "param":
            return f"the backward returned no gradient for parameter {key[1][1:]}{tree}"
        return f"the backward returned no dL/d{key[1]} (None) for a floating input"

    report.rows.extend(judge_all(rows, m_values, r_values, tol, verdict, dtype,
                                 lambda need: measure(lambda point: vjp(*point), (params, x, dy), 2, dtype, need=need,
                                                 samples=ERROR_MODEL.samples, same_pieces=_choices(layer)), why,
                                 lambda: precise_truth(lambda point: vjp(*point), (params, x, dy))))
    report.set_diagnoser(_diagnoser(layer, params, x, dy, rows, report.rows, m_values, r_values))
    return report


def _diagnoser(layer, params, x, dy, rows, judged, manual, reference):
    """Failing rows' diagnoses: scales named by the layer's sizes, dL/dx fitted against dy (an identity path) and
    the layer's named terms (``backward_terms``)."""
    batch = next((int(v.shape[0]) for v in jax.tree_util.tree_leaves(x) if np.ndim(v)), None)
    cotangent = {f"dy.{k}" if k != "y" else "dy": v for k, v in by_kind("y", dy).items()}

    def context_of(i):
        key = rows[i][2]
        shape = np.shape(reference[key])
        terms = {}
        if key == ("dx", "x") and hasattr(layer, "backward_terms"):
            terms = {n: np.asarray(v) for n, v in layer.backward_terms(params, x, dy).items()}
        others = {n: v for n, v in cotangent.items() if np.shape(v) == shape} if key[0] == "dx" else {}
        return context_for(layer, shape, batch=batch, is_param=key[0] == "param", others=others, terms=terms,
                           devices=jax.device_count())

    return forensics.diagnoser(judged, lambda i: (manual[rows[i][2]], reference[rows[i][2]]), context_of)
