"""A manual layer as a function JAX can differentiate: ``as_function(layer) -> f(params, x)``.

``f`` is a ``jax.custom_vjp`` whose forward is the layer's ``forward`` and
whose VJP is the layer's hand-written ``backward``:

.. math::
    f(p, x) = y, \\qquad \\mathrm{vjp}_f(dy) = \\mathrm{backward}(p, \\mathrm{cache}, dy) = (dp, dx),

so ``jax.grad`` of a loss written around ``f`` (with optax, inside a flax or
equinox module, under ``jax.jit`` or ``jax.vmap``) runs the manual backward.
This module is the one manual module that calls ``jax.custom_vjp`` (and
``jax.custom_jvp``, to refuse second order); ``tests/test_purity.py`` names it.

Second order is not supported. Differentiating ``f`` twice would
differentiate the backward's own array ops, which manualbp checks only to
first order; so every cotangent the backward returns passes through an
identity whose derivative raises ``NotImplementedError`` (``jax.grad`` of
``jax.grad``, ``jax.hessian``, forward-over-reverse). ``jax.jvp`` of ``f``
itself raises JAX's own "can't apply forward-mode autodiff (jvp) to a
custom_vjp function".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.arguments import check_layer_object
from manualbp.layers.base import as_arrays, describe, name_of
from manualbp.layers.walk import check_gradients


def _is_array(v) -> bool:
    return isinstance(v, (jax.Array, np.ndarray))


def _floating(v) -> bool:
    return _is_array(v) and jnp.issubdtype(v.dtype, jnp.floating)


class _Static(NamedTuple):
    """The non-array parts of a cache (shapes, flags) and of x (its structure): carried in the residuals' treedef."""

    cache_treedef: Any
    cache_static: tuple  # (index, value) of every leaf of the cache that is not an array
    x_treedef: Any
    x_spec: tuple  # (shape, dtype) of every leaf of x (a JAX dtype: PRNG keys included)


jax.tree_util.register_pytree_node(_Static, lambda s: ((), tuple(s)), lambda aux, _: _Static(*aux))


def _second_order_error(name: str):
    @jax.custom_jvp
    def first_order_only(cotangents):
        return cotangents

    @first_order_only.defjvp
    def _(primals, tangents):
        del primals, tangents
        raise NotImplementedError(
            f"as_function({name}): second-order derivatives through a manual backward are not supported: JAX would "
            "differentiate the backward's own array ops, which manualbp checks only to first order. For Hessians, "
            "differentiate the reference twin instead (manualbp.reference.apply(layer, params, x))."
        )

    return first_order_only


def as_function(layer):
    """``f(params, x) -> y`` whose JAX derivative is ``layer``'s hand-written backward.

    Args:
      layer: a manualbp layer or model (``Sequential``, ...), or a user's own
        object with ``forward(params, x) -> (y, cache)`` and
        ``backward(params, cache, dy) -> (dparams, dx)``.

    Returns:
      A ``jax.custom_vjp`` function of ``(params, x)``: ``jax.grad``,
      ``jax.vjp``, ``jax.jit`` and ``jax.vmap`` work on it. Integer inputs (the
      ids of ``Embedding``) get no cotangent (None).

    The backward's output is checked against the arguments (a ValueError/TypeError
    naming the layer and the parameter or input otherwise): dparams must have
    params' structure, and each cotangent its primal's shape and dtype.

    Example::

        f = mbp.as_function(mbp.Sequential(mbp.Dense(16), mbp.Tanh(), mbp.Dense(3)))
        loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean()
        grads = jax.grad(loss)(params, x, y)   # the manual backward, through jax.grad
    """
    check_layer_object("as_function", layer, "layer")
    name = name_of(layer)
    first_order_only = _second_order_error(name)

    def fun(params, x):
        return layer.forward(*_as_arrays(_plain(params), x))[0]

    fun.__name__ = fun.__qualname__ = f"as_function({name})"
    f = jax.custom_vjp(fun)

    def fwd(params, x):
        params, x = _as_arrays(params, x)
        y, cache = layer.forward(_plain(params), x)
        cache_leaves, cache_treedef = jax.tree_util.tree_flatten(cache)
        x_leaves, x_treedef = jax.tree_util.tree_flatten(x)
        static = _Static(cache_treedef, tuple((i, v) for i, v in enumerate(cache_leaves) if not _is_array(v)),
                         x_treedef, tuple((tuple(v.shape), v.dtype) for v in x_leaves))
        return y, (params, [v for v in cache_leaves if _is_array(v)], static)

    def bwd(res, dy):
        params, arrays, static = res
        given = dict(static.cache_static)
        it = iter(arrays)
        leaves = [given[i] if i in given else next(it) for i in range(static.cache_treedef.num_leaves)]
        plain = _plain(params)
        dparams, dx = layer.backward(plain, jax.tree_util.tree_unflatten(static.cache_treedef, leaves), dy)
        dparams = _like(params, _checked_dparams(layer, plain, dparams))
        return first_order_only((dparams, _checked_dx(name, static, dx)))

    f.defvjp(fwd, bwd)
    return f


def _plain(tree):
    """``tree`` with every ``Mapping`` in it a dict (an ``nnx.State``, a ``FrozenDict``): the layers' params trees."""
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(_plain(v) for v in tree)
    return tree


def _like(params, grads):
    """``grads`` (plain dicts, checked against ``_plain(params)``) in the structure of ``params`` itself, leaf by path."""
    if jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(grads):
        return grads
    by_path = {jax.tree_util.keystr(kp): g for kp, g in jax.tree_util.tree_leaves_with_path(grads)}
    return jax.tree_util.tree_map_with_path(lambda kp, _: by_path[jax.tree_util.keystr(kp)], params)


def _as_arrays(params, x):
    """jax arrays (JAX may hand a custom_vjp's primal NumPy arrays, which lack ``.at``)."""
    return as_arrays((params, x))


def _checked_dparams(layer, params, dparams):
    """dparams with params' structure, each leaf of its parameter's shape and dtype (``walk.check_gradients``)."""
    check_gradients(layer, params, dparams, f"as_function({name_of(layer)})")
    return dparams


def _checked_dx(name: str, static: _Static, dx):
    """dx with x's structure; None for integer inputs (ids), which have no cotangent."""
    specs = static.x_spec
    if dx is None:
        if any(jnp.issubdtype(dtype, jnp.floating) for _, dtype in specs):
            raise ValueError(f"as_function({name}): backward returned dx = None for a floating input x")
        return None
    try:
        leaves = static.x_treedef.flatten_up_to(dx)
    except (TypeError, ValueError):
        raise ValueError(f"as_function({name}): backward returned dx of structure {jax.tree_util.tree_structure(dx)}, "
                         f"but x has structure {static.x_treedef}") from None
    out = []
    for i, ((shape, dtype), g) in enumerate(zip(specs, leaves)):
        if not jnp.issubdtype(dtype, jnp.floating):
            out.append(None)  # integer ids: no cotangent
            continue
        _check_leaf(name, "input x" if len(specs) == 1 else f"input x[{i}]", shape, dtype, g)
        out.append(g)
    return jax.tree_util.tree_unflatten(static.x_treedef, out)


def _check_leaf(name: str, what: str, shape, dtype, g):
    if g is None or not hasattr(g, "shape"):
        raise ValueError(f"as_function({name}): backward returned {describe(g) if g is not None else None} as the "
                         f"gradient of {what} ({np.dtype(dtype).name}[{','.join(map(str, shape))}])")
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"as_function({name}): backward returned a gradient of shape {tuple(g.shape)} for {what} "
                         f"of shape {tuple(shape)}")
    if np.dtype(g.dtype) != np.dtype(dtype):
        raise TypeError(f"as_function({name}): backward returned a gradient of dtype {np.dtype(g.dtype).name} for "
                        f"{what} of dtype {np.dtype(dtype).name}")
