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
layer), ``backward_terms(params, x, dy) -> {name: term}`` to name the terms
whose sum is its dx (a failing row's diagnosis then says which term is off),
and ``kink_pattern(cache)`` to expose the discrete choices of its
forward (ReLU signs, max-pool winners) so finite differences can tell a
crossed kink from a wrong derivative.

Layers whose evaluation differs from training (BatchNorm's running
statistics) add ``forward_eval(params, stats, x) -> y`` and
``update_stats(stats, cache) -> stats`` (a pure step from a training
forward's cache). A container's ``stats`` is a dict keyed by the path of
each such layer below it ("1", "3/block/1", as reports name layers), so a
model's evaluation forward is ``model.forward_eval(params, stats, x)``.

Every shape check here runs on static shapes, so it costs nothing under
``jax.jit`` and fires before XLA sees a mismatched operand. A value check
(labels or ids out of range, a negative mask) can only raise where the values
are concrete; under tracing ``check_values`` hands back the bad entries, which
the layer turns into NaN so that no invalid input yields a plausible number
(and, within ``checkify_values()``, registers a ``jax.experimental.checkify``
check).

Every ``init`` of a ``Layer`` first checks its arguments (``_checked_init``): the key
(``arguments.as_key``), the input shape (sizes >= 1), that jax can make arrays of the requested
floating dtype (``check_dtype_available``: with 64-bit mode off, ``init(..., jnp.float64)`` would
otherwise hand back float32 parameters behind a jax warning), and that the parameters fit in
memory (``arguments.check_init_fits``). Every ``backward`` checks its dy against what the forward
cached (``check_dy``): a dy of another shape or dtype than y is refused, never broadcast or promoted.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from manualbp.layers.arguments import as_key, check_float_dtype, check_init_fits, check_input_shape, raised_by_manualbp

Array = jax.Array
Params = Any
Cache = Any
Shape = tuple[int, ...]


def check_dtype_available(layer, dtype, *, where: str = "init"):
    """Raise a TypeError unless ``dtype`` is a floating dtype jax can make arrays of now: float64 needs 64-bit mode.

    With ``jax_enable_x64`` off, jax silently narrows float64 to float32 (with
    a warning), so parameters, and every comparison made with them, would not
    be in the precision asked for.
    """
    return check_float_dtype(f"{name_of(layer)}.{where}", dtype)


def _checked_init(init):
    """Wrap a layer's ``init``: its key, input shape and dtype are checked, and its size, before any array is made.

    The key: a typed PRNG key or raw uint32[2] key data (passed on as a typed key); None only for a
    layer that draws nothing (else a TypeError saying so). The input shape: sizes >= 1. The dtype: a
    floating dtype jax can make. The size: ``arguments.check_init_fits``.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs)
        arguments.apply_defaults()
        where = f"{name_of(self)}.init"
        key = arguments.arguments.get("key")
        if key is not None:
            arguments.arguments["key"] = key = as_key(where, key)
        if "input_shape" in arguments.arguments:
            check_input_shape(where, arguments.arguments["input_shape"])
        if arguments.arguments.get("dtype") is not None:
            check_dtype_available(self, arguments.arguments["dtype"])
        if key is None:
            try:
                return init(*arguments.args, **arguments.kwargs)
            except Exception as e:
                if raised_by_manualbp(e):
                    raise
                raise TypeError(f"{where}: key is None, but {name_of(self)} draws its initial parameters at random; "
                                "pass a PRNG key, e.g. jax.random.key(0)") from e
        check_init_fits(self, init, key, arguments.arguments.get("input_shape"),
                        arguments.arguments.get("dtype", jnp.float32))
        return init(*arguments.args, **arguments.kwargs)

    return checked


class Layer:
    """Mixin with the defaults of a parameter-free, shape-preserving layer.

    ``init`` (this default and every subclass's own) is wrapped, once, at class creation, with
    ``_checked_init``: the one place that checks an init's key, input shape, dtype and size.
    """

    children: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "init" in cls.__dict__:
            cls.init = _checked_init(cls.__dict__["init"])

    @property
    def name(self) -> str:
        return type(self).__name__

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def init(self, key, input_shape, dtype=jnp.float32):
        del key, dtype
        return {}, self.output_shape(input_shape)

    def check_input(self, params, x):
        """Raise on invalid VALUES of a concrete input (ids out of range); shapes are forward's job. Default: none.

        ``x`` may be traced, or partly (concrete lengths captured beside a traced x): check only what is concrete.
        """
        del params, x

    def kink_pattern(self, cache):
        """The forward's discrete choices (ReLU signs, max-pool winners) from its cache: by default it makes none.

        A layer whose forward chooses (or holds layers that may) overrides this (``manualbp.layers.walk``).
        """
        del cache
        return ()


Layer.init = _checked_init(Layer.init)


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
    """'float32[2,5]' for an array (a PRNG key array too: 'key<fry>[2]'), the type name otherwise."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        dtype = getattr(x.dtype, "name", None) or np.dtype(x.dtype).name
        return f"{dtype}[{','.join(map(str, x.shape))}]"
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


def spec(x) -> jax.ShapeDtypeStruct:
    """x's shape and dtype without x: what a cache keeps when backward needs no more (static, free under jit)."""
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def check_dy(layer, dy, shape, dtype):
    """Raise unless ``dy`` (dL/dy, what ``backward`` receives) is an array of y's ``shape`` and ``dtype``.

    Every layer's backward calls it first, with y's shape and dtype as its forward's cache gives
    them: a dy of another shape would be broadcast or fail deep inside XLA, and one of another
    dtype would be promoted (a float16 dy into a float32 Dense gives float32 gradients computed
    from float16 values). ``dtype`` None: the cache does not keep y's dtype, and dy must only be
    floating. Static: free under ``jax.jit``.
    """
    name = name_of(layer)
    shape = tuple(shape)
    if not hasattr(dy, "shape") or not hasattr(dy, "dtype"):
        raise TypeError(f"{name}: expected dy (dL/dy) as an array of y's shape {shape}, got {describe(dy)}")
    if tuple(dy.shape) != shape:
        raise ValueError(f"{name}: expected dy of shape {shape} (the shape of y), got {tuple(dy.shape)}")
    if dtype is None:  # a cache that does not keep y's dtype (ReLU's packed mask): dx takes dy's, no parameter meets it
        if not jnp.issubdtype(dy.dtype, jnp.floating):
            raise TypeError(f"{name}: expected dy of a floating dtype, got {describe(dy)}")
        return
    dtype = np.dtype(dtype)
    if np.dtype(dy.dtype) != dtype:
        raise TypeError(f"{name}: expected dy of dtype {dtype.name} (the dtype of y), got {describe(dy)}; "
                        "a gradient is never promoted: cast dy, or run the layer in dy's precision")


def check_positive_int(layer: str, field: str, value) -> int:
    """Raise a ValueError naming ``layer`` unless the hyperparameter ``field`` is an int >= 1 (a bool is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{layer}: {field} must be a positive int, got {value!r}")
    return value


def check_dtype_match(layer, x, w, *, what: str = "x", wname: str = "W"):
    """Raise a TypeError unless ``x`` and parameter ``w`` share a dtype (nothing is silently promoted)."""
    if x.dtype != w.dtype:
        raise TypeError(
            f"{layer.name}: {what} has dtype {np.dtype(x.dtype).name} but {wname} has "
            f"{np.dtype(w.dtype).name}; use one precision for inputs and parameters"
        )


def check_params(layer, params, keys: tuple[str, ...]):
    """Raise a ValueError unless ``params`` is a mapping with exactly ``keys``.

    Any ``Mapping`` will do, not only a dict: a flax ``nnx.State`` (what a dict held in one ``nnx.Param``
    becomes after an optimizer's update), a ``FrozenDict``.
    """
    if not isinstance(params, Mapping):
        raise ValueError(
            f"{layer.name}: expected params to be a mapping (a dict) with keys {sorted(keys)}, "
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


def check_input_width(layer, params, key: str, x, shape, *, axis: int = -1, says: str = "x with last axis {}",
                      note: str = ""):
    """Which side is wrong: run before ``check_param`` so that a mismatch the input caused names the input.

    ``shape`` is the parameter's shape as the hyperparameters fix it, with ``None`` at the one axis that
    x's width (``x.shape[axis]``) sets. When ``params[key]`` has every other axis right and differs from
    x only there, the parameter agrees with the layer and x is the odd one out: raise a ValueError saying
    what x should be (``says`` formatted with the width) and why. Otherwise return, and ``check_param``
    judges the parameter.
    """
    w_shape = getattr(params[key], "shape", None)
    if w_shape is None or len(w_shape) != len(shape):
        return
    i = shape.index(None)
    if all(s is None or s == n for s, n in zip(shape, w_shape)) and w_shape[i] != x.shape[axis]:
        raise ValueError(
            f"{name_of(layer)}: expected {says.format(w_shape[i])} ({key} has shape {tuple(w_shape)}{note}), "
            f"got x of shape {tuple(x.shape)}"
        )


def check_no_params(layer, params):
    """Raise a ValueError unless ``params`` is empty: a parameter-free layer given weights is a mismatched tree."""
    if params is None or (isinstance(params, (dict, tuple, list)) and len(params) == 0):
        return
    got = sorted(params) if isinstance(params, dict) else describe(params)
    raise ValueError(
        f"{name_of(layer)}: takes no parameters (expected params {{}}), got {got}; the params tree does not match the model"
    )


def as_array(v):
    """``jnp.asarray(v)`` without compiling anything: a numpy array or scalar is put on the device as it is.

    ``jnp.asarray`` of a numpy array runs a small compiled copy, one XLA program per shape and dtype;
    ``jax.device_put`` makes the same array (the same dtype canonicalization, not weakly typed) with a
    plain transfer. A jax array is returned as it is: inside a trace, ``jnp.asarray`` would turn a
    concrete constant (valid lengths the traced function captured) into a tracer, whose values can
    no longer be checked.
    """
    if isinstance(v, jax.Array):
        return v
    if isinstance(v, (np.ndarray, np.generic)):
        return jax.device_put(v)
    return jnp.asarray(v)


def as_arrays(tree):
    """``as_array`` on every leaf of ``tree`` (None stays None)."""
    return jax.tree_util.tree_map(as_array, tree)


def is_concrete(tree) -> bool:
    """True when no leaf of ``tree`` is a tracer (i.e. we run eagerly and may inspect values)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def first_nonfinite(tree) -> str | None:
    """Path of the first leaf of a concrete ``tree`` holding NaN or Inf, else None.

    Tested with numpy on the host: an eager ``jnp.isfinite`` would compile two
    small XLA programs per distinct leaf shape, the largest cost of a first check.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if leaf is None:
            continue
        leaf = np.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.isfinite(leaf).all():
            return jax.tree_util.keystr(path) or "<root>"
    return None


def check_finite(name: str, what: str, tree):
    """Raise a ValueError if a concrete ``tree`` holds NaN/Inf (a no-op under tracing)."""
    if not is_concrete(tree):
        return
    where = first_nonfinite(tree)
    if where is not None:
        raise ValueError(f"{name}: {what} contains NaN or Inf at {where}")


def as_index(ids):
    """Integer ``ids`` as a signed type at least as wide (int32, or int64 for 64-bit ids).

    Every id that is a valid index keeps its value and every other stays out of
    range (a uint32 above 2^31 becomes negative), so a range test or a
    comparison with ``arange(V)`` never wraps around in a narrow dtype: uint8
    ids compared with V = 257 in uint8 would.
    """
    return ids.astype(jnp.int64 if np.dtype(ids.dtype).itemsize == 8 else jnp.int32)


def _span(v) -> str:
    if np.issubdtype(v.dtype, np.floating) and np.isnan(v).any():
        return "NaN"
    return f"values in [{np.min(v)}, {np.max(v)}]" if v.size else "no values"


def check_values(name: str, message: str, values, is_bad):
    """A value check: raise where it can, otherwise register it and return the bad entries.

    ``is_bad(v)`` maps the values (integers widened by ``as_index``) to a
    boolean array, with numpy or jax.numpy operators alike. Concrete values:
    raise ``ValueError("<name>: <message>, got values in [lo, hi]")`` if any
    is bad, else return None. Traced values (under ``jax.jit``), which cannot
    be inspected: return the boolean mask of bad entries, for the caller to
    turn into NaN; within ``checkify_values()`` also register
    ``checkify.debug_check`` with the same message (an error when the caller
    runs under ``jax.experimental.checkify.checkify``).
    """
    if is_concrete(values):
        v = np.asarray(values)
        if np.issubdtype(v.dtype, np.integer):
            v = v.astype(np.int64)
        if np.any(is_bad(v)):
            raise ValueError(f"{name}: {message}, got {_span(v)}")
        return None
    v = as_index(values) if jnp.issubdtype(values.dtype, jnp.integer) else values
    bad = is_bad(v)
    if v.size == 0 or not _CHECKIFY[-1]:
        return bad
    checkify.debug_check(~jnp.any(bad), f"{name}: {message}, got values in [{{lo}}, {{hi}}]",
                         lo=jnp.min(v), hi=jnp.max(v))
    return bad


_CHECKIFY = [False]  # a stack: is check_values registering checkify checks in the function being traced?


@contextlib.contextmanager
def checkify_values(enabled: bool = True):
    """Within this block, traced value checks also register ``checkify.debug_check`` (opt-in).

    Off by default: a registered check is an effect that XLA must keep, which slows
    a training step even when nobody checkifies the function (BENCHMARKS.md). Use it
    inside the function you trace, then run that function under
    ``jax.experimental.checkify.checkify`` to turn invalid values into an error;
    ``mbp.value_and_grad(model, head, checkify=True)`` does it for you. Trace-time
    only: it changes what is traced, never a compiled function.
    """
    _CHECKIFY.append(bool(enabled))
    try:
        yield
    finally:
        _CHECKIFY.pop()
