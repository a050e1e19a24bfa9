"""What ``check_vjp`` differentiates, and the errors that name the argument or output when shapes disagree.

Arguments (positional and keyword) are pytrees; every array leaf gets a label by fn's own parameter
name and its path, "q", "params['W']", "args[2]" for one caught by ``*args`` ("arg 2" where fn has no
readable signature). Floating array leaves are differentiated, integer and boolean ones (indices, masks)
and Python scalars are side inputs. Nothing here calls autodiff: structures and shapes come from tracing
(``jax.make_jaxpr``, ``jax.eval_shape``), which also shows whether a function runs a hand-written rule.
An error raised while tracing or running fn or its reference is re-raised naming the phase (``phase``).
"""

from __future__ import annotations

import contextlib
import inspect
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


def parameter_names(fn, args: tuple, kwargs: dict) -> list[str]:
    """How rows name each positional argument: fn's own parameter names (``q``, ``k``, ``v``), ``args[2]`` for one
    caught by ``*args``, and ``arg 2`` where fn has no readable signature or would not accept the call."""
    fallback = [f"arg {i}" for i in range(len(args))]
    try:
        sig = inspect.signature(fn)
        sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return fallback
    names, params = [], list(sig.parameters.values())
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(names) < len(args):
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            names.extend(f"{p.name}[{j}]" for j in range(len(args) - len(names)))
    return names if len(names) == len(args) else fallback


@dataclass
class Inputs:
    """The call ``fn(*args, **kwargs)`` flattened: ``leaves`` with ``treedef`` (of the pair (args, kwargs));
    ``diff_index`` the leaves differentiated and ``labels`` theirs (by fn's parameter names); ``names`` the name
    of each positional argument."""

    args: tuple
    kwargs: dict
    leaves: list
    treedef: object
    diff_index: list
    labels: list
    names: list

    @classmethod
    def build(cls, name: str, args: tuple, argnums, kwargs: dict | None = None, fn=None) -> Inputs:
        kwargs = dict(kwargs or {})
        names = parameter_names(fn, args, kwargs) if fn is not None else [f"arg {i}" for i in range(len(args))]
        marked_args = cls._marked(name, args, kwargs, names, argnums)
        paths, treedef = jax.tree_util.tree_flatten_with_path((tuple(args), kwargs))
        leaves, diff_index, labels = [], [], []
        for j, (path, leaf) in enumerate(paths):
            where = path[1].idx if path[0].idx == 0 else path[1].key
            label = (names[where] if path[0].idx == 0 else str(where)) + keystr(path[2:])
            marked = marked_args is not None and where in marked_args
            if marked and isinstance(leaf, float):
                leaf = jnp.asarray(leaf)
            if _is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.complexfloating):
                raise TypeError(f"check_vjp: {label} is {describe(leaf)}; complex inputs are not supported")
            if marked and not (_is_array(leaf) and _floating(leaf)):
                raise TypeError(
                    f"check_vjp: {label} is marked differentiable (argnums) but is {describe(leaf)}: integer "
                    f"inputs (indices, masks, PRNG keys) have no cotangent; leave {label.split('[')[0]} out of "
                    "argnums, and it is passed through as a side input"
                )
            if _is_array(leaf):
                leaf = as_array(leaf)
                if _floating(leaf) and (marked_args is None or marked):
                    diff_index.append(j)
                    labels.append(label)
            leaves.append(leaf)
        for j, label in zip(diff_index, labels):
            if not np.all(np.isfinite(np.asarray(leaves[j]))):
                raise ValueError(f"check_vjp: {label} contains NaN or Inf; a comparison at such a point proves nothing")
        if not diff_index:
            raise ValueError(f"check_vjp: no floating-point array among the arguments of {name} to differentiate "
                             f"(given {describe_tree((tuple(args), kwargs) if kwargs else tuple(args))}); pass the "
                             "inputs to differentiate as float arrays")
        args2, kwargs2 = jax.tree_util.tree_unflatten(treedef, leaves)
        return cls(args2, kwargs2, leaves, treedef, diff_index, labels, names)

    @staticmethod
    def _marked(name, args, kwargs, names, argnums):
        """The positions (ints) and keyword names (strs) ``argnums`` selects, or None for every argument."""
        if argnums is None:
            return None
        argnums = (argnums,) if isinstance(argnums, (int, str)) else tuple(argnums)
        out, bad = set(), []
        for a in argnums:
            if isinstance(a, str):
                if a in names:
                    out.add(names.index(a))
                elif a in kwargs:
                    out.add(a)
                else:
                    bad.append(a)
            elif isinstance(a, int) and not isinstance(a, bool) and -len(args) <= a < len(args):
                out.add(a % len(args))
            else:
                bad.append(a)
        if bad or not argnums:
            raise ValueError(f"check_vjp: argnums {argnums!r} does not name arguments of {name}, which was given "
                             f"{len(args)} argument(s) ({', '.join(names) or 'none'})"
                             + (f" and the keyword argument(s) {', '.join(kwargs)}" if kwargs else ""))
        return out

    @property
    def diff(self) -> list:
        return [self.leaves[j] for j in self.diff_index]

    def rebuild(self, diff, cast=None) -> tuple:
        """(args, kwargs) with the differentiable leaves ``diff`` (and every other leaf through ``cast``, if given)."""
        leaves = list(self.leaves) if cast is None else [cast(v) for v in self.leaves]
        for j, v in zip(self.diff_index, diff):
            leaves[j] = v
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def closed(self, f):
        """``diff -> f(*args, **kwargs)`` with the side inputs held fixed."""
        def call(diff):
            args, kwargs = self.rebuild(diff)
            return f(*args, **kwargs)

        return call

    def closed_high(self, f, dtype):
        """As ``closed``, with the fixed floating inputs cast to ``dtype`` too (for the high-precision truth)."""
        up = lambda v: v.astype(dtype) if _is_array(v) and _floating(v) else v  # noqa: E731

        def call(diff):
            args, kwargs = self.rebuild(diff, cast=up)
            return f(*args, **kwargs)

        return call

    def astype(self, dtype) -> Inputs:
        """The same call with every floating array in ``dtype`` (converted on the host; x64 must be on for float64)."""
        leaves = [jax.device_put(np.asarray(v).astype(dtype)) if _is_array(v) and _floating(v) else v
                  for v in self.leaves]
        args, kwargs = jax.tree_util.tree_unflatten(self.treedef, leaves)
        return Inputs(args, kwargs, leaves, self.treedef, self.diff_index, self.labels, self.names)

    def rolled(self) -> list:
        """Other inputs in fn's domain (each leaf's entries rolled by one), to disturb any state the forward keeps."""
        return [jax.device_put(np.roll(np.asarray(v).ravel(), 1).reshape(v.shape)) for v in self.diff]

    def check_cotangent_dtypes(self, name: str, cotangents):
        """A cotangent has its input's dtype (JAX lets a custom_vjp return another one silently)."""
        for label, leaf, ct in zip(self.labels, self.diff, cotangents):
            if np.dtype(ct.dtype) != np.dtype(leaf.dtype):
                raise TypeError(f"check_vjp: the backward of {name} returns a cotangent of dtype {np.dtype(ct.dtype).name} "
                                f"for {label} ({describe(leaf)}); a cotangent has its input's dtype")

    def masks(self, where) -> list:
        """``where`` (``{label: bool array}``, or a function of fn's arguments returning one) as one mask per
        differentiable leaf (None: every entry compared); a ValueError naming a label or shape that does not fit."""
        if where is None:
            return [None] * len(self.labels)
        given = where(*self.args, **self.kwargs) if callable(where) else where
        if not isinstance(given, dict):
            raise TypeError(f"check_vjp: where= must be a dict {{input: boolean array}} (or a function of the "
                            f"arguments returning one), keyed by {self.labels}; got {type(given).__name__}")
        unknown = sorted(set(given) - set(self.labels))
        if unknown:
            raise ValueError(f"check_vjp: where= names {unknown}, which are not differentiated inputs; they are "
                             f"{self.labels}")
        out = []
        for label, leaf in zip(self.labels, self.diff):
            m = given.get(label)
            if m is not None:
                m = np.asarray(m)
                if m.dtype != np.bool_ or m.shape != tuple(leaf.shape):
                    raise ValueError(f"check_vjp: where={{{label!r}: ...}} must be a boolean array of {label}'s shape "
                                     f"{tuple(leaf.shape)} (True: compared), got {m.dtype.name}{list(m.shape)}")
            out.append(m)
        return out


def _custom_rules(jaxpr, found: dict) -> dict:
    """{"custom_vjp": [its bwd, ...], "custom_jvp": [...]} met in ``jaxpr`` and every jaxpr nested in it."""
    for eqn in jaxpr.eqns:
        kind = eqn.primitive.name.removesuffix("_call")
        if kind in found:
            rule = eqn.params.get("bwd") if kind == "custom_vjp" else getattr(eqn.params.get("call_jaxpr"), "jaxpr", None)
            info = getattr(rule, "debug_info", None)
            found[kind].append(getattr(info, "func_src_info", None) or kind)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr, or a Jaxpr itself
                if hasattr(inner, "eqns"):
                    _custom_rules(inner, found)
    return found


def trace_both(name: str, ref_name: str, fn, reference, inputs: Inputs):
    """(fn's output spec, the hand-written rules fn runs: {"custom_vjp": [...], "custom_jvp": [...]}) from one
    trace of fn (and of the reference, when it is a function), without running them.

    Raises a ValueError when the reference itself runs a ``jax.custom_vjp``: its
    VJP would be a hand-written rule too (or fn's own), not autodiff, and the
    comparison would prove nothing. An error raised by either trace says whose.
    """
    args, kwargs = inputs.args, inputs.kwargs
    with phase(f"the forward of {name}"):
        fn_jaxpr, out = jax.make_jaxpr(lambda: fn(*args, **kwargs), return_shape=True)()
    if callable(reference):
        with phase(f"the reference {ref_name}"):
            ref_jaxpr, ref_out = jax.make_jaxpr(lambda: reference(*args, **kwargs), return_shape=True)()
        rules = _custom_rules(ref_jaxpr.jaxpr, {"custom_vjp": []})["custom_vjp"]
        if rules:
            raise ValueError(f"check_vjp: the reference {ref_name} runs a jax.custom_vjp ({rules[0]}), so jax.vjp of it "
                             f"is a hand-written rule too, not autodiff; pass the computation written with plain ops")
        check_outputs(name, ref_name, out, ref_out)
    elif not jax.tree_util.tree_leaves(out):
        raise ValueError(f"check_vjp: {name} returns no array ({describe_tree(out)}); there is nothing to compare")
    if not any(jnp.issubdtype(v.dtype, jnp.inexact) for v in jax.tree_util.tree_leaves(out)):
        raise ValueError(f"check_vjp: {name} returns no floating-point output ({describe_tree(out)}): no cotangent "
                         "flows back through it, there is no VJP to check")
    return out, _custom_rules(fn_jaxpr.jaxpr, {"custom_vjp": [], "custom_jvp": []})


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


def check_custom_vjp_rule(fn, name: str, inputs: Inputs):
    """When ``fn`` is itself a ``jax.custom_vjp``, check its backward's output against the arguments, by name.

    One cotangent per argument (None for one without a gradient), each of its
    argument's structure, shape and dtype. Found from shapes alone
    (``jax.eval_shape`` of fwd then bwd), before JAX's own message.
    """
    # a jax.custom_vjp after defvjp, recognized by its attributes (nondiff_argnums change bwd's signature: JAX reports)
    if (not (callable(getattr(fn, "fwd", None)) and callable(getattr(fn, "bwd", None))) or getattr(fn, "nondiff_argnums", ())
            or inputs.kwargs):
        return
    args = inputs.args

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
            raise ValueError(f"check_vjp: the backward of {name} returns for {inputs.names[i]} a cotangent of "
                             f"structure {describe_tree(ct)}, but {inputs.names[i]} is {describe_tree(arg)}") from None
        for (path, leaf), c in zip(jax.tree_util.tree_leaves_with_path(arg), ct_leaves):
            if c is None or not _is_array(leaf) or not _floating(leaf):
                continue
            label = f"{inputs.names[i]}{keystr(path)}"
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


def _reraised(e: BaseException, text: str) -> Exception:
    """``text`` as an exception of the nearest built-in class of ``e`` that takes a message (jax's
    ConcretizationTypeError -> TypeError), else a RuntimeError."""
    for cls in type(e).__mro__:
        if cls.__module__ == "builtins" and issubclass(cls, Exception):
            try:
                return cls(text)
            except TypeError:  # a built-in that wants more than a message (UnicodeDecodeError)
                continue
    return RuntimeError(text)


@contextlib.contextmanager
def phase(what: str):
    """An error raised while running ``what`` (fn's forward, its backward, the reference, expected_vjp) says so:
    re-raised as its nearest built-in type (a TypeError stays a TypeError) with "check_vjp: <what> raised ..." in
    front, the original chained. check_vjp's own messages pass unchanged."""
    try:
        yield
    except Exception as e:
        text = str(e)
        if text.startswith("check_vjp:"):
            raise
        first = "\n".join(text.strip().splitlines()[:6])
        raise _reraised(e, f"check_vjp: {what} raised {type(e).__name__}: {first}") from e
