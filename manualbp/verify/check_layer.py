"""One layer alone, manual forward/backward vs ``jax.vjp`` of a reference forward: ``check_layer``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import reference as ref
from manualbp.layers.base import name_of
from manualbp.verify.compare import by_kind, dtype_of
from manualbp.verify.report import Report, compare_arrays, param_rows
from manualbp.verify.tolerances import tolerance


def check_layer(layer, params, x, dy=None, *, reference=None, key=None, jit: bool = False,
                title: str | None = None) -> Report:
    """One layer alone: manual forward/backward vs ``jax.vjp`` of the reference forward.

    Args:
      layer: a manualbp layer, or a user's own object with
        ``forward(params, x) -> (y, cache)`` and
        ``backward(params, cache, dy) -> (dparams, dx)``.
      params, x: the point to check at.
      dy: the cotangent; a random normal one (``key``, default key 0) if None.
      reference: ``fn(params, x) -> y`` written with library ops; defaults
        to the reference forward registered for ``type(layer)``.
      jit: run the manual forward and backward under ``jax.jit``.

    Rows: forward y, dL/dx, and one per parameter gradient.
    """
    name = name_of(layer)
    x = jax.tree_util.tree_map(jnp.asarray, x)
    if dy is None:
        key = jax.random.key(0) if key is None else key
        shapes = jax.eval_shape(lambda p, x: layer.forward(p, x)[0], params, x)
        leaves, treedef = jax.tree_util.tree_flatten(shapes)
        keys = jax.random.split(key, len(leaves))
        dy = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)])

    def manual(params, x, dy):
        y, cache = layer.forward(params, x)
        return (y, *layer.backward(params, cache, dy))

    y, dparams, dx = (jax.jit(manual) if jit else manual)(params, x, dy)
    fn = reference if reference is not None else (lambda p, x: ref.forward(layer, p, x, ref.NoTaps()))
    y_r, dparams_r, dx_r = ref.vjp_layer(fn, params, x, dy)
    dtype = dtype_of(params, x)
    tol = tolerance(dtype)
    report = Report(title or f"check_layer: {name} vs jax.vjp", dtype.name, tol)
    for key_, val in by_kind("y", y).items():
        report.rows.append(compare_arrays(name, "forward " + key_, val, by_kind("y", y_r)[key_], tol))
    if dx_r is not None:
        for key_, val in by_kind("x", dx).items():
            report.rows.append(compare_arrays(name, "dL/d" + key_, val, by_kind("x", dx_r)[key_], tol))
    report.rows.extend(param_rows(name, dparams, dparams_r, tol))
    return report
