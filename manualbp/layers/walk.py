"""The tree of layers inside a model: walking it, what each backward must return, what each forward declares.

A model is a layer whose containers (``Sequential``, ``Parallel``, ``Residual``, ``TransformerBlock``)
have ``children``; other layers may hold layers as hyperparameters (an RNN's activation, a
``Bidirectional``'s recurrent layer). ``walk`` follows the children with their parameters;
``sublayers`` finds both kinds.

A backward returns ``(dparams, dx)``: dparams a tree of exactly params' structure, shapes and
dtypes, and dx shaped like x (None only for an input with no floating leaf: ids, lengths).
``gradient_mismatches`` lists every parameter gradient that is not so, by layer and parameter
path; the entry points that hand gradients to a user (``value_and_grad``, training,
``as_function``) raise on the first (``check_gradients``), the checkers report each as a failing row.

Discrete choices: a forward that makes some (a ReLU's sign, a max-pool's winner) exposes them with
``kink_pattern(cache)``, so that finite differences and the rounding estimates can tell a crossed
kink from a wrong derivative. ``Layer``'s default declares none; a layer that holds other layers
and keeps that default declares none only if it holds none; a user's object without the method
declares nothing (``choices_declared`` is False).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from manualbp.layers.base import Layer, children_of, describe, name_of


def walk(layer, params, path=""):
    """Yield (path, layer, params) for ``layer`` and every layer inside it, depth first."""
    yield path, layer, params
    if children_of(layer):
        for (name, child), p in zip(children_of(layer), layer.split_params(params)):
            yield from walk(child, p, f"{path}/{name}" if path else name)


def label(path: str, layer) -> str:
    """How reports and messages name a layer: "<path> <name>", the whole model as "model <name>"."""
    return f"{path} {name_of(layer)}" if path else f"model {name_of(layer)}"


def _is_layer(v) -> bool:
    return not isinstance(v, type) and hasattr(v, "forward") and hasattr(v, "backward")


def sublayers(layer) -> list:
    """Every layer ``layer`` holds: its children, and layers among its dataclass fields (in tuples too)."""
    found = [child for _, child in children_of(layer)]

    def visit(v):
        if _is_layer(v):
            if not any(v is f for f in found):
                found.append(v)
        elif isinstance(v, (tuple, list)):
            for item in v:
                visit(item)

    if dataclasses.is_dataclass(layer) and not isinstance(layer, type):
        for f in dataclasses.fields(layer):
            visit(getattr(layer, f.name))
    return found


def choices_declared(layer) -> bool:
    """Whether every discrete choice of ``layer``'s forward is exposed by its ``kink_pattern`` (or it makes none).

    ``kink_pattern`` overridden: the layer composes the patterns of the layers it holds, which must
    declare theirs. ``Layer``'s default (no choices): true only for a layer holding no other layer
    (a composite that keeps the default would hide its parts' choices). No such method (a user's own
    object), or ``kink_pattern = None``: not declared.
    """
    method = getattr(type(layer), "kink_pattern", None)
    if method is None:
        return False
    parts = sublayers(layer)
    if method is Layer.kink_pattern:
        return not parts
    return all(choices_declared(p) for p in parts)


def param_name(key_path) -> str:
    """'dW' for a params leaf at ['W'] (nested keys are joined: 'dcell.W'): how rows name a parameter's gradient."""
    return "d" + ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _leaves(tree) -> dict:
    return {param_name(kp): leaf for kp, leaf in jax.tree_util.tree_leaves_with_path(tree)}


class Mismatch(NamedTuple):
    """A parameter gradient not of its parameter's form: where, which, what kind, in words, and the error to raise."""

    layer: str  # the layer's label ("1 Affine")
    name: str  # the gradient's name in reports ("db", "dcell.W")
    kind: str  # "missing", "extra" or "wrong structure"
    detail: str
    error: type  # TypeError for a dtype alone, ValueError otherwise


def gradient_mismatches(model, params, grads) -> list[Mismatch]:
    """Every parameter gradient of ``grads`` not of params' form, layer by layer (static: free under ``jax.jit``).

    kind: "missing" (params has the leaf, the backward returned none or None), "extra" (the backward
    returned a leaf params does not have), "wrong structure" (another shape or dtype, or not an array).
    """
    out = []
    for (path, layer, p), (_, _, g) in zip(walk(model, params), _walk_grads(model, grads)):
        if children_of(layer):
            continue
        want, got = _leaves(p), _leaves(g)
        name = label(path, layer)
        for key, leaf in want.items():
            d = got.get(key)
            if d is None:
                out.append(Mismatch(name, key, "missing", f"its backward returned no gradient for parameter {key[1:]} "
                                                          f"({describe(leaf)})", ValueError))
            elif not hasattr(d, "dtype") or np.shape(d) != np.shape(leaf) or np.dtype(d.dtype) != np.dtype(leaf.dtype):
                dtype_only = hasattr(d, "dtype") and np.shape(d) == np.shape(leaf)
                out.append(Mismatch(name, key, "wrong structure", f"its backward returned {describe(d)} for parameter "
                                                                  f"{key[1:]}, which is {describe(leaf)}",
                                    TypeError if dtype_only else ValueError))
        out.extend(Mismatch(name, key, "extra", f"its backward returned a gradient {key} ({describe(got[key])}) for a "
                                                f"parameter {key[1:]} it does not have", ValueError)
                   for key in got if key not in want)
    return out


def _walk_grads(model, grads):
    """``walk`` over a gradient tree that may be malformed: a container's part that cannot be split is None."""
    def visit(layer, g, path):
        yield path, layer, g
        kids = children_of(layer)
        if kids:
            try:
                parts = layer.split_params(g)
            except (TypeError, ValueError, IndexError, KeyError):
                parts = [None] * len(kids)
            for (name, child), part in zip(kids, parts):
                yield from visit(child, part, f"{path}/{name}" if path else name)

    yield from visit(model, grads, "")


def check_gradients(model, params, grads, where: str):
    """Raise (naming the layer and the parameter) unless ``grads`` has exactly params' structure, shapes and dtypes."""
    bad = gradient_mismatches(model, params, grads)
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise first.error(f"{where}: {first.layer}: {first.kind} gradient: {first.detail}{more}; a backward must "
                          f"return dparams with exactly its params' structure, shapes and dtypes")


class MissingDx(ValueError):
    """A layer's backward returned dx = None inside a container whose earlier layers need dL/dx.

    ``label``: the child as its container names it ("1 Affine", "block Dense"); the message says where.
    """

    def __init__(self, message: str, label: str):
        super().__init__(message)
        self.label = label


def require_dx(container, child_name: str, child, dx):
    """Raise ``MissingDx`` if a child's backward returned dx = None where the layers before it need dL/dx."""
    if dx is None:
        raise MissingDx(f"{name_of(container)}: the backward of {child_name} ({name_of(child)}) returned dx=None, but "
                         f"its input is the output of an earlier layer, whose backward needs dL/dx", f"{child_name} {name_of(child)}")
