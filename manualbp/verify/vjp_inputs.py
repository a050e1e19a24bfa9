"""What ``check_vjp`` differentiates, and the errors that name the argument or output when shapes disagree.

Arguments are pytrees; every array leaf gets a label by its path, "arg 0",
"arg 1['W']", "arg 2[0]". Floating array leaves are differentiated, integer and
boolean ones (indices, masks) and Python scalars are side inputs. Nothing here
calls autodiff: structures and shapes come from tracing (``jax.make_jaxpr``,
``jax.eval_shape``), which also shows whether a function runs a hand-written
rule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.base import as_array, describe

keystr = jax.tree_util.keystr


class _Desc:
    """A leaf shown as 'float32[3,4]' when a whole structure is printed."""

    def __init__(self, leaf):
        self.text = describe(leaf)

    def __repr__(self):
        return self.text


def describe_tree(tree) -> str:
    """'(float32[3], {'W': float32[4,2]})': a pytree's structure with each leaf's dtype and shape."""
    return repr(jax.tree_util.tree_map(_Desc, tree))


def _is_array(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _floating(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jnp.floating)


@dataclass
class Inputs:
    """The arguments flattened: ``leaves`` with ``treedef``; ``diff_index`` the leaves differentiated, ``labels`` theirs."""

    args: tuple
    leaves: list
    treedef: object
    diff_index: list
    labels: list

    @classmethod
    def build(cls, name: str, args: tuple, argnums) -> Inputs:
        if argnums is not None:
            argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
            bad = [a for a in argnums if not isinstance(a, int) or isinstance(a, bool) or not -len(args) <= a < len(args)]
            if bad or not argnums:
                raise ValueError(f"check_vjp: argnums {argnums!r} does not name arguments of {name}, "
                                 f"which was given {len(args)} argument(s)")
            argnums = {a % len(args) for a in argnums}
        paths, treedef = jax.tree_util.tree_flatten_with_path(args)
        leaves, diff_index, labels = [], [], []
        for j, (path, leaf) in enumerate(paths):
            i, label = path[0].idx, f"arg {path[0].idx}{keystr(path[1:])}"
            marked = argnums is not None and i in argnums
            if marked and isinstance(leaf, float):
                leaf = jnp.asarray(leaf)
            if _is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.complexfloating):
                raise TypeError(f"check_vjp: {label} is {describe(leaf)}; complex inputs are not supported")
            if marked and not (_is_array(leaf) and _floating(leaf)):
                raise TypeError(
                    f"check_vjp: {label} is marked differentiable (argnums) but is {describe(leaf)}: integer "
                    f"inputs (indices, masks, PRNG keys) have no cotangent; leave argument {i} out of argnums, and "
                    "it is passed through as a side input"
                )
            if _is_array(leaf):
                leaf = as_array(leaf)
                if _floating(leaf) and (argnums is None or marked):
                    diff_index.append(j)
                    labels.append(label)
            leaves.append(leaf)
        for j, label in zip(diff_index, labels):
            if not np.all(np.isfinite(np.asarray(leaves[j]))):
                raise ValueError(f"check_vjp: {label} contains NaN or Inf; a comparison at such a point proves nothing")
        if not diff_index:
            raise ValueError(f"check_vjp: no floating-point array among the arguments of {name} to differentiate "
                             f"(given {describe_tree(args)}); pass the inputs to differentiate as float arrays")
        return cls(jax.tree_util.tree_unflatten(treedef, leaves), leaves, treedef, diff_index, labels)

    @property
    def diff(self) -> list:
        return [self.leaves[j] for j in self.diff_index]

    def _rebuild(self, diff, cast=None) -> tuple:
        leaves = list(self.leaves) if cast is None else [cast(v) for v in self.leaves]
        for j, v in zip(self.diff_index, diff):
            leaves[j] = v
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def closed(self, f):
        """``diff -> f(*args)`` with the side inputs held fixed."""
        return lambda diff: f(*self._rebuild(diff))

    def closed_high(self, f, dtype):
        """As ``closed``, with the fixed floating inputs cast to ``dtype`` too (for the high-precision truth)."""
        up = lambda v: v.astype(dtype) if _is_array(v) and _floating(v) else v  # noqa: E731
        return lambda diff: f(*self._rebuild(diff, cast=up))

    def rolled(self) -> list:
        """Other inputs in fn's domain (each leaf's entries rolled by one), to disturb any state the forward keeps."""
        return [jax.device_put(np.roll(np.asarray(v).ravel(), 1).reshape(v.shape)) for v in self.diff]

    def check_cotangent_dtypes(self, name: str, cotangents):
        """A cotangent has its input's dtype (JAX lets a custom_vjp return another one silently)."""
        for label, leaf, ct in zip(self.labels, self.diff, cotangents):
            if np.dtype(ct.dtype) != np.dtype(leaf.dtype):
                raise TypeError(f"check_vjp: the backward of {name} returns a cotangent of dtype {np.dtype(ct.dtype).name} "
                                f"for {label} ({describe(leaf)}); a cotangent has its input's dtype")


def _custom_rules(jaxpr, found: dict) -> dict:
    """{"custom_vjp": [its bwd, ...], "custom_jvp": [...]} met in ``jaxpr`` and every jaxpr nested in it."""
    for eqn in jaxpr.eqns:
        kind = eqn.primitive.name.removesuffix("_call")
        if kind in found:
            info = getattr(eqn.params.get("bwd"), "debug_info", None)
            found[kind].append(getattr(info, "func_src_info", None) or kind)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr, or a Jaxpr itself
                if hasattr(inner, "eqns"):
                    _custom_rules(inner, found)
    return found


def trace_both(name: str, ref_name: str, fn, reference, args: tuple):
    """(fn's output spec, whether fn has a hand-written rule) from one trace of each, without running them.

    Raises a ValueError when the reference itself runs a ``jax.custom_vjp``: its
    VJP would be a hand-written rule too (or fn's own), not autodiff, and the
    comparison would prove nothing.
    """
    fn_jaxpr, out = jax.make_jaxpr(lambda: fn(*args), return_shape=True)()
    ref_jaxpr, ref_out = jax.make_jaxpr(lambda: reference(*args), return_shape=True)()
    rules = _custom_rules(ref_jaxpr.jaxpr, {"custom_vjp": []})["custom_vjp"]
    if rules:
        raise ValueError(f"check_vjp: the reference {ref_name} runs a jax.custom_vjp ({rules[0]}), so jax.vjp of it is a "
                         f"hand-written rule too, not autodiff; pass the computation written with plain ops")
    check_outputs(name, ref_name, out, ref_out)
    if not any(jnp.issubdtype(v.dtype, jnp.inexact) for v in jax.tree_util.tree_leaves(out)):
        raise ValueError(f"check_vjp: {name} returns no floating-point output ({describe_tree(out)}): no cotangent "
                         "flows back through it, there is no VJP to check")
    return out, any(_custom_rules(fn_jaxpr.jaxpr, {"custom_vjp": [], "custom_jvp": []}).values())


def check_outputs(name: str, ref_name: str, out, ref_out):
    """Raise unless ``fn`` and ``reference`` return the same structure, shapes and dtypes; return fn's output spec."""
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(ref_out):
        raise ValueError(f"check_vjp: {name} and {ref_name} return different structures: {name} returns "
                         f"{describe_tree(out)}, {ref_name} returns {describe_tree(ref_out)}")
    if not jax.tree_util.tree_leaves(out):
        raise ValueError(f"check_vjp: {name} returns no array ({describe_tree(out)}); there is nothing to compare")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree_util.tree_leaves(ref_out)):
        where = f"output{keystr(path)}"
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"check_vjp: {where} of {name} has shape {tuple(a.shape)} but {ref_name}'s has "
                             f"shape {tuple(b.shape)}")
        if np.dtype(a.dtype) != np.dtype(b.dtype):
            raise TypeError(f"check_vjp: {where} of {name} has dtype {np.dtype(a.dtype).name} but {ref_name}'s has "
                            f"dtype {np.dtype(b.dtype).name}; compare the two in one precision")


def check_custom_vjp_rule(fn, name: str, args: tuple):
    """When ``fn`` is itself a ``jax.custom_vjp``, check its backward's output against the arguments, by name.

    One cotangent per argument (None for one without a gradient), each of its
    argument's structure, shape and dtype. Found from shapes alone
    (``jax.eval_shape`` of fwd then bwd), before JAX's own message.
    """
    # a jax.custom_vjp after defvjp, recognized by its attributes (nondiff_argnums change bwd's signature: JAX reports)
    if not (callable(getattr(fn, "fwd", None)) and callable(getattr(fn, "bwd", None))) or getattr(fn, "nondiff_argnums", ()):
        return

    def fwd_then_bwd():
        out, res = fn.fwd(*args)
        ct = jax.tree_util.tree_map(
            lambda v: jnp.zeros_like(v) if jnp.issubdtype(v.dtype, jnp.inexact) else np.zeros(v.shape, jax.dtypes.float0),
            out)
        return fn.bwd(res, ct)

    try:
        cts = jax.eval_shape(fwd_then_bwd)
    except Exception:  # noqa: BLE001  (the rule cannot be run on shapes alone: the real call reports, reworded below)
        return
    if not isinstance(cts, (tuple, list)) or len(cts) != len(args):
        got = f"{len(cts)} cotangent(s)" if isinstance(cts, (tuple, list)) else f"a bare {describe_tree(cts)}"
        raise ValueError(f"check_vjp: the backward of {name} returns {got} but {name} takes {len(args)} argument(s) "
                         f"{describe_tree(tuple(args))}; return a tuple with one cotangent per argument "
                         "(None for one without a gradient)")
    for i, (arg, ct) in enumerate(zip(args, cts)):
        if ct is None:
            continue
        treedef = jax.tree_util.tree_structure(arg)
        try:
            ct_leaves = treedef.flatten_up_to(ct)
        except (TypeError, ValueError):
            raise ValueError(f"check_vjp: the backward of {name} returns for arg {i} a cotangent of structure "
                             f"{describe_tree(ct)}, but arg {i} is {describe_tree(arg)}") from None
        for (path, leaf), c in zip(jax.tree_util.tree_leaves_with_path(arg), ct_leaves):
            if c is None or not _is_array(leaf) or not _floating(leaf):
                continue
            label = f"arg {i}{keystr(path)}"
            if tuple(c.shape) != tuple(leaf.shape):
                raise ValueError(f"check_vjp: the backward of {name} returns a cotangent of shape {tuple(c.shape)} "
                                 f"for {label} ({describe(leaf)}); a cotangent has its input's shape")
            if np.dtype(c.dtype) != np.dtype(leaf.dtype):
                raise TypeError(f"check_vjp: the backward of {name} returns a cotangent of dtype {np.dtype(c.dtype).name} "
                                f"for {label} ({describe(leaf)}); a cotangent has its input's dtype")


@contextlib.contextmanager
def reraise_rule_error(name: str, inputs: Inputs):
    """JAX's own complaint about a custom_vjp backward deeper inside ``fn``, said in check_vjp's words."""
    try:
        yield
    except (TypeError, ValueError) as e:
        if "Custom VJP bwd rule" not in str(e):
            raise
        raise type(e)(f"check_vjp: a jax.custom_vjp backward inside {name} returns cotangents that do not match its "
                      f"primal inputs (one per input, of its structure, shape and dtype; {name} was called with "
                      f"{describe_tree(inputs.args)}). JAX: {e}") from e
