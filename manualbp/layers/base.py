"""The layer protocol and the input checks every layer shares.

A layer is a frozen, hashable dataclass of hyperparameters with three pure
methods::

    init(key, input_shape, dtype) -> (params, output_shape)   # shapes exclude batch
    forward(params, x)            -> (y, cache)                # cache: what backward needs
    backward(params, cache, dy)   -> (dparams, dx)             # dparams has params' structure

Containers (``Sequential``, ``Parallel``, ``Residual``) also expose
``children`` (a tuple of ``(name, layer)``), ``split_params(params)`` (the
children's params in the same order) and ``replace_children(layers)``; the
comparison walks them to name every quantity by its path in the model.

A layer may implement ``backward_trace(params, cache, dy) -> (dparams, dx,
extras)`` to expose intermediate gradients (e.g. dL/dh_t of a recurrent
layer), and ``kink_pattern(cache)`` to expose the discrete choices of its
forward (ReLU signs, max-pool winners) so finite differences can tell a
crossed kink from a wrong derivative.

Layers whose evaluation differs from training (BatchNorm's running
statistics) add ``forward_eval(params, stats, x) -> y`` and
``update_stats(stats, cache) -> stats`` (a pure step from a training
forward's cache). A container's ``stats`` is a dict keyed by the path of
each such layer below it ("1", "3/block/1", as reports name layers), so a
model's evaluation forward is ``model.forward_eval(params, stats, x)``.

Every shape check here runs on static shapes, so it costs nothing under
``jax.jit`` and fires before XLA sees a mismatched operand.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Any
Cache = Any
Shape = tuple[int, ...]


class Layer:
    """Mixin with the defaults of a parameter-free, shape-preserving layer."""

    children: tuple = ()

    @property
    def name(self) -> str:
        return type(self).__name__

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def init(self, key, input_shape, dtype=jnp.float32):
        del key, dtype
        return {}, self.output_shape(input_shape)


def name_of(layer) -> str:
    """How messages and reports name a layer: its ``name``, or its type's name for a user's own object."""
    return getattr(layer, "name", type(layer).__name__)


def children_of(layer) -> tuple:
    """A container's ``(name, child)`` pairs; ``()`` for a leaf layer (a user's layer need not define it)."""
    return tuple(getattr(layer, "children", ()))


def child_stats(stats: dict, name: str, child) -> dict:
    """A child's running statistics inside its container's (``stats`` keyed by layer path below the container).

    A container child gets the entries below its name, with the name stripped; a leaf child (a BatchNorm)
    the entry at its name ({} if it has none).
    """
    if children_of(child):
        return {k[len(name) + 1:]: v for k, v in stats.items() if k.startswith(name + "/")}
    return stats.get(name, {})


def with_child_stats(out: dict, name: str, child, stats) -> dict:
    """``out`` with a child's running statistics placed under its name (the inverse of ``child_stats``)."""
    if children_of(child):
        out.update({f"{name}/{k}": v for k, v in stats.items()})
    elif stats:
        out[name] = stats
    return out


def forward_eval_of(layer, params, stats, x):
    """Evaluation mode of any layer: its ``forward_eval`` (running statistics) if it has one, else its forward."""
    if hasattr(layer, "forward_eval"):
        return layer.forward_eval(params, stats, x)
    return layer.forward(params, x)[0]


def update_stats_of(layer, stats, cache):
    """A layer's running statistics advanced from a training forward's ``cache``; unchanged if it keeps none."""
    return layer.update_stats(stats, cache) if hasattr(layer, "update_stats") else stats


def describe(x) -> str:
    """'float32[2,5]' for an array, the type name otherwise."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{np.dtype(x.dtype).name}[{','.join(map(str, x.shape))}]"
    return type(x).__name__


def check_array(layer, x, *, what: str = "x", min_ndim: int = 1, ndim: int | None = None):
    """Raise a TypeError/ValueError naming ``layer`` unless ``x`` is a float array of the right rank."""
    name = layer if isinstance(layer, str) else name_of(layer)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected {what} to be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: expected {what} of a floating dtype, got {describe(x)}; "
            f"cast it, e.g. {what}.astype(jnp.float32)"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {what} of rank {ndim}, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected {what} of rank >= {min_ndim}, got shape {tuple(x.shape)}")


def check_dtype_match(layer, x, w, *, what: str = "x", wname: str = "W"):
    """Raise a TypeError unless ``x`` and parameter ``w`` share a dtype (nothing is silently promoted)."""
    if x.dtype != w.dtype:
        raise TypeError(
            f"{layer.name}: {what} has dtype {np.dtype(x.dtype).name} but {wname} has "
            f"{np.dtype(w.dtype).name}; use one precision for inputs and parameters"
        )


def check_params(layer, params, keys: tuple[str, ...]):
    """Raise a ValueError unless ``params`` is a dict with exactly ``keys``."""
    if not isinstance(params, dict):
        raise ValueError(
            f"{layer.name}: expected params to be a dict with keys {sorted(keys)}, "
            f"got {type(params).__name__}; the params tree does not match the model"
        )
    if set(params) != set(keys):
        raise ValueError(
            f"{layer.name}: expected params with keys {sorted(keys)}, got {sorted(params)}; "
            "the params tree does not match the model"
        )


def check_param(layer, params, key: str, shape, *, like=None, why: str = ""):
    """Raise unless ``params[key]`` is a floating array of exactly ``shape`` (and, given ``like``, of its dtype).

    Parameters are never broadcast or promoted, so a gradient always comes back
    with exactly its parameter's shape. ``shape`` is what the layer's
    hyperparameters and input imply; ``why`` says so in the message, e.g.
    "(in, features) = (4, 3)". Static: free under ``jax.jit``.
    """
    name = name_of(layer)
    w = params[key]
    shape = tuple(shape)
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(f"{name}: expected parameter {key} to be an array of shape {shape}, got {type(w).__name__}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{name}: expected parameter {key} of a floating dtype, got {describe(w)}")
    if tuple(w.shape) != shape:
        raise ValueError(
            f"{name}: expected parameter {key} of shape {shape}{' ' + why if why else ''}, got {tuple(w.shape)}"
        )
    if like is not None:
        check_dtype_match(layer, like, w, wname=key)


def check_no_params(layer, params):
    """Raise a ValueError unless ``params`` is empty: a parameter-free layer given weights is a mismatched tree."""
    if params is None or (isinstance(params, (dict, tuple, list)) and len(params) == 0):
        return
    got = sorted(params) if isinstance(params, dict) else describe(params)
    raise ValueError(
        f"{name_of(layer)}: takes no parameters (expected params {{}}), got {got}; the params tree does not match the model"
    )


def is_concrete(tree) -> bool:
    """True when no leaf of ``tree`` is a tracer (i.e. we run eagerly and may inspect values)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def first_nonfinite(tree) -> str | None:
    """Path of the first leaf of a concrete ``tree`` holding NaN or Inf, else None."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if leaf is None or not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
            continue
        if not bool(jnp.all(jnp.isfinite(leaf))):
            return jax.tree_util.keystr(path) or "<root>"
    return None


def check_finite(name: str, what: str, tree):
    """Raise a ValueError if a concrete ``tree`` holds NaN/Inf (a no-op under tracing)."""
    if not is_concrete(tree):
        return
    where = first_nonfinite(tree)
    if where is not None:
        raise ValueError(f"{name}: {what} contains NaN or Inf at {where}")
