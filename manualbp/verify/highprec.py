"""A jaxpr evaluated in 50+ digit arithmetic (mpmath): the truth against which float32/64 gradients are measured.

``truth(fn, *args)`` traces ``fn`` (e.g. the reference's ``jax.vjp`` of a layer) in float64 and evaluates its
jaxpr with every floating value an mpmath number of 50 or more significant digits, as many as the result
needs (``truth``): the same formulas jax.grad runs, without their rounding. Inputs are exact (a float32 or
float64 number is exactly an mpf), so the result is the exact value of what the reference computes at that
point, correct to the last bit of a float64, however much a formula cancels.

Values are numpy arrays: an mp value is an object array of ``mpmath.mpf``; everything else (integer
indices, masks, PRNG keys, float constants) stays a plain array. An equation with no mp input that makes no
float from a float runs in jax itself (iota, comparisons of ints, ``random_bits``: exact there). The
primitives the reference's layers use have an mp rule here:

* elementwise math and comparisons: one mpmath call per entry;
* data movement (reshape, transpose, broadcast, slice, pad, concatenate, gather, select_n, ...): the
  primitive runs in jax on arrays of INDICES (float64 integers, exact), whose result says which input
  entry lands where; the mp values are then picked by those indices;
* sums and products (dot_general, conv_general_dilated, reduce_sum, reduce_window, select_and_scatter_add,
  scatter-add, cumsum): written out on object arrays, the windows of a convolution or a pooling found by
  the same index picking;
* scan, jit and custom_jvp/vjp calls: their inner jaxpr evaluated the same way.

A primitive without a rule raises NotImplementedError naming it. Only for small arrays: each entry of each
operation is a Python call; ``cost`` counts them before anything runs.

The verdict uses it (``rounding.measure``) where float64 has no other measure of jax.grad's own error: a
quantity that float32 loses entirely (a saturated softmax), whose float32-based estimate is then only a
lower bound.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from jax import lax

DIGITS = 50
_MPF = mpmath.mpf


def is_mp(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == object


def _is_float(v) -> bool:
    return np.issubdtype(np.asarray(v).dtype, np.floating) if not is_mp(v) else True


def to_mp(v) -> np.ndarray:
    """An object array of mpf (a float, int or bool array converted exactly; an mp array returned as it is)."""
    if is_mp(v):
        return v
    a = np.asarray(v)
    if a.dtype == object:  # an mpf scalar, or a 0-d result of a reduction
        return np.array([_MPF(t) for t in a.ravel()], dtype=object).reshape(a.shape)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    flat = [_MPF(float(t)) if np.issubdtype(a.dtype, np.floating) else _MPF(int(t)) for t in a.ravel()]
    out = np.empty(a.shape, dtype=object)
    out.ravel()[:] = flat if flat else []
    return out


def to_float64(v) -> np.ndarray:
    """An mp array rounded to float64 (correctly rounded); a plain array as float64."""
    if is_mp(v):
        return np.vectorize(float, otypes=[np.float64])(v) if v.size else np.zeros(v.shape)
    return np.asarray(v, dtype=np.float64)


def _ew(f, n=1):
    u = np.frompyfunc(f, n, 1)

    def rule(*args, **params):
        del params
        out = u(*[to_mp(a) for a in args])
        return out if isinstance(out, np.ndarray) else np.array(out, dtype=object)

    return rule


def _div(a, b):
    if b == 0:
        return mpmath.nan if a == 0 or mpmath.isnan(a) else mpmath.inf * mpmath.sign(a)  # an mpf zero has no sign
    return a / b


def _sqrt(a):
    return mpmath.sqrt(a) if a >= 0 else mpmath.nan


def _cmp(op):
    u = np.frompyfunc(op, 2, 1)
    return lambda a, b, **p: np.asarray(u(to_mp(a), to_mp(b)), dtype=bool)


_ELEMENTWISE = {
    "neg": _ew(lambda a: -a), "exp": _ew(mpmath.exp), "log": _ew(lambda a: mpmath.log(a) if a >= 0 else mpmath.nan),
    "log1p": _ew(lambda a: mpmath.log1p(a) if a >= -1 else mpmath.nan), "expm1": _ew(mpmath.expm1),
    "tanh": _ew(mpmath.tanh), "logistic": _ew(lambda a: 1 / (1 + mpmath.exp(-a))), "erf": _ew(mpmath.erf),
    "erfc": _ew(mpmath.erfc), "sqrt": _ew(_sqrt), "rsqrt": _ew(lambda a: 1 / _sqrt(a)), "abs": _ew(abs),
    "sign": _ew(mpmath.sign), "square": _ew(lambda a: a * a), "exp2": _ew(lambda a: mpmath.mpf(2) ** a),
    "sin": _ew(mpmath.sin), "cos": _ew(mpmath.cos), "floor": _ew(mpmath.floor), "ceil": _ew(mpmath.ceil),
    "add": _ew(lambda a, b: a + b, 2), "add_any": _ew(lambda a, b: a + b, 2), "sub": _ew(lambda a, b: a - b, 2),
    "mul": _ew(lambda a, b: a * b, 2), "div": _ew(_div, 2), "pow": _ew(lambda a, b: a**b, 2),
    "max": _ew(lambda a, b: a if a >= b or mpmath.isnan(a) else b, 2),
    "min": _ew(lambda a, b: a if a <= b or mpmath.isnan(a) else b, 2),
    "gt": _cmp(lambda a, b: a > b), "lt": _cmp(lambda a, b: a < b), "ge": _cmp(lambda a, b: a >= b),
    "le": _cmp(lambda a, b: a <= b), "eq": _cmp(lambda a, b: a == b), "ne": _cmp(lambda a, b: a != b),
    "is_finite": lambda a, **p: np.asarray(np.frompyfunc(mpmath.isfinite, 1, 1)(to_mp(a)), dtype=bool),
}

# primitives that only move entries: run on index arrays (see the module docstring)
_MOVES = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "concatenate", "pad",
          "dynamic_slice", "dynamic_update_slice", "gather", "split", "copy", "copy_p", "select_n", "reduce_precision",
          "sharding_constraint", "stop_gradient", "optimization_barrier"}


def _moved(prim, args, params):
    """Run a data-movement primitive on indices of its float operands, then pick the mp values they name."""
    ext, idx_args, offset = [_MPF(0)], [], 1
    for a in args:
        if _is_float(a):
            m = to_mp(a)
            ext.extend(m.ravel().tolist())
            idx_args.append(jnp.asarray(np.arange(offset, offset + m.size, dtype=np.float64).reshape(m.shape)))
            offset += m.size
        else:
            idx_args.append(a)
    out = prim.bind(*idx_args, **params)
    ext = np.array(ext, dtype=object)
    pick = lambda o: ext[np.asarray(o).astype(np.int64)]  # noqa: E731
    return [pick(o) for o in out] if prim.multiple_results else pick(out)


def _integer_pow(a, *, y):
    return _ew(lambda t: t**y)(a)


def _convert(a, *, new_dtype, **params):
    if np.issubdtype(np.dtype(new_dtype), np.floating):
        return to_mp(a)
    return to_float64(a).astype(new_dtype)


def _reduce(np_reduce):
    def rule(a, *, axes, **params):
        out = np_reduce(to_mp(a), axis=tuple(axes))
        return to_mp(out)

    return rule


def _argmax(a, *, axes, index_dtype):
    return np.argmax(to_mp(a), axis=axes[0]).astype(index_dtype)


def _cumsum(a, *, axis, reverse):
    a = to_mp(a)
    if reverse:
        return np.flip(np.cumsum(np.flip(a, axis), axis=axis), axis)
    return to_mp(np.cumsum(a, axis=axis))


def _dot_general(lhs, rhs, *, dimension_numbers, **params):
    (lc, rc), (lb, rb) = dimension_numbers
    lhs, rhs = to_mp(lhs), to_mp(rhs)
    lf = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    rf = [d for d in range(rhs.ndim) if d not in rc and d not in rb]
    size = lambda a, dims: math.prod(a.shape[d] for d in dims)  # noqa: E731
    L = np.transpose(lhs, [*lb, *lf, *lc]).reshape(size(lhs, lb), size(lhs, lf), size(lhs, lc))
    R = np.transpose(rhs, [*rb, *rc, *rf]).reshape(size(rhs, rb), size(rhs, rc), size(rhs, rf))
    out = np.matmul(L, R) if L.shape[2] else np.zeros((L.shape[0], L.shape[1], R.shape[2]), dtype=object)
    return to_mp(out.reshape(*[lhs.shape[d] for d in (*lb, *lf)], *[rhs.shape[d] for d in rf]))


def _windows(shape, window, strides, padding, base_dilation=None, window_dilation=None):
    """(K, *out) int indices into [sentinel, *flat input]: each window's entries, 0 where it reads padding."""
    nd = len(shape)
    base_dilation = base_dilation or (1,) * nd
    window_dilation = window_dilation or (1,) * nd
    idx = np.arange(1, math.prod(shape) + 1).reshape(shape)
    dil = np.zeros([(s - 1) * d + 1 if s else 0 for s, d in zip(shape, base_dilation)], np.int64)
    dil[tuple(slice(None, None, d) for d in base_dilation)] = idx
    pads = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
    p = np.pad(dil, pads)
    p = p[tuple(slice(max(-lo, 0), p.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(padding))]
    out = [(p.shape[i] - (window[i] - 1) * window_dilation[i] - 1) // strides[i] + 1 for i in range(nd)]
    stacks = []
    for off in itertools.product(*[range(w) for w in window]):
        sl = tuple(slice(o * wd, o * wd + (n - 1) * s + 1, s) for o, wd, n, s in zip(off, window_dilation, out, strides))
        stacks.append(p[sl])
    return np.stack(stacks)


def _conv(lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
          batch_group_count, **params):
    if feature_group_count != 1 or batch_group_count != 1:
        raise NotImplementedError("highprec: conv_general_dilated with feature or batch groups")
    lspec, rspec, ospec = dimension_numbers
    L, R = np.transpose(to_mp(lhs), lspec), np.transpose(to_mp(rhs), rspec)  # (N, C, *sp), (O, I, *k)
    N, C, *_ = L.shape
    O, _, *kernel = R.shape
    w = _windows(L.shape, (1, 1, *kernel), (1, 1, *window_strides), ((0, 0), (0, 0), *padding),
                 (1, 1, *lhs_dilation), (1, 1, *rhs_dilation))  # (K, N, C, *out)
    vals = np.concatenate([[_MPF(0)], L.ravel()]).astype(object)[w]
    K, out_sp = w.shape[0], w.shape[3:]
    Lm = np.moveaxis(vals, (0, 1, 2), (-1, 0, -2)).reshape(N * math.prod(out_sp), C * K)  # rows (n, *out), cols (c, k)
    out = np.matmul(Lm, R.reshape(O, C * K).T).reshape(N, *out_sp, O)
    canon = np.moveaxis(out, -1, 1)  # (N, O, *out)
    return to_mp(np.transpose(canon, np.argsort(ospec)))


def _reduce_window(kind):
    def rule(a, *, window_dimensions, window_strides, padding, base_dilation, window_dilation):
        a = to_mp(a)
        w = _windows(a.shape, window_dimensions, window_strides, padding, base_dilation, window_dilation)
        fill = _MPF(0) if kind == "sum" else mpmath.mpf("-inf")
        vals = np.concatenate([[fill], a.ravel()]).astype(object)[w]
        return to_mp(np.sum(vals, axis=0) if kind == "sum" else np.max(vals, axis=0))

    return rule


def _select_and_scatter_add(source, operand, *, select_prim, window_dimensions, window_strides, padding):
    """Each window's FIRST maximum (``ge`` keeps the earlier of two equal entries) receives its source value."""
    if select_prim is not lax.ge_p:
        raise NotImplementedError(f"highprec: select_and_scatter_add with {select_prim}")
    op = to_mp(operand)
    w = _windows(op.shape, window_dimensions, window_strides, padding)
    vals = np.concatenate([[mpmath.mpf("-inf")], op.ravel()]).astype(object)[w]
    chosen = np.take_along_axis(w, np.argmax(vals, axis=0)[None], 0)[0]
    out = np.array([_MPF(0)] * (op.size + 1), dtype=object)
    np.add.at(out, chosen.ravel(), to_mp(source).ravel())
    return out[1:].reshape(op.shape)


def _scatter_add(operand, indices, updates, **params):
    """operand + S updates, S the 0/1 matrix of where each update entry goes (jax's Jacobian, exact)."""
    op, up = to_mp(operand), to_mp(updates)
    prim = lax.scatter_add_p
    S = jax.jacfwd(lambda u: prim.bind(jnp.zeros(op.shape), indices, u, **params))(jnp.zeros(up.shape))
    S = np.asarray(S).reshape(op.size, up.size)
    rows, cols = np.nonzero(S)
    out = op.ravel().copy()
    np.add.at(out, rows, S[rows, cols].astype(np.int64).astype(object) * up.ravel()[cols])
    return to_mp(out.reshape(op.shape))


_RULES = {
    **_ELEMENTWISE,
    "integer_pow": _integer_pow, "convert_element_type": _convert, "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max), "reduce_min": _reduce(np.min), "argmax": _argmax, "cumsum": _cumsum,
    "dot_general": _dot_general, "conv_general_dilated": _conv, "reduce_window_sum": _reduce_window("sum"),
    "reduce_window_max": _reduce_window("max"), "select_and_scatter_add": _select_and_scatter_add,
    "scatter-add": _scatter_add, "scatter_add": _scatter_add,
}
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
          "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


def _closed(j):
    return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, [])


def _scan(*args, jaxpr, length, reverse, num_consts, num_carry, **params):
    consts, carry, xs = args[:num_consts], list(args[num_consts:num_consts + num_carry]), args[num_consts + num_carry:]
    ys = [None] * length
    for i in (reversed(range(length)) if reverse else range(length)):
        out = eval_jaxpr(*_closed(jaxpr), *consts, *carry, *[x[i] for x in xs])
        carry, ys[i] = out[:num_carry], out[num_carry:]
    stacked = []
    for k in range(len(jaxpr.jaxpr.outvars) - num_carry):
        parts = [y[k] for y in ys]
        if any(is_mp(p) for p in parts):
            parts = [to_mp(p) for p in parts]
        stacked.append(np.stack([np.asarray(p) for p in parts]) if parts else None)
    return [*carry, *stacked]


def _read(env, v):
    return v.val if hasattr(v, "val") and not hasattr(v, "count") else env[v]


_BORN = {"exp", "exp2", "expm1", "logistic", "erfc", "tanh"}  # where magnitudes far from 1 are born (e^-290 = 1e-126)
_RANGE = []  # [smallest, largest] binary exponent of a nonzero result of a _BORN primitive, while ``truth`` runs


def _track(out):
    if not _RANGE:
        return
    mags = [mpmath.mag(v) for v in out.ravel() if v != 0 and mpmath.isfinite(v)]
    if mags:
        _RANGE[0], _RANGE[1] = min(_RANGE[0], *mags), max(_RANGE[1], *mags)


def eval_jaxpr(jaxpr, consts, *args):
    """The outputs of ``jaxpr`` at ``args``: mp arrays where a float depends on an mp input, plain arrays elsewhere."""
    env = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = np.asarray(c) if not hasattr(c, "dtype") or not jax.dtypes.issubdtype(c.dtype, jax.dtypes.prng_key) else c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [_read(env, v) for v in eqn.invars]
        name = eqn.primitive.name
        floats_out = any(jnp.issubdtype(o.aval.dtype, jnp.floating) for o in eqn.outvars if hasattr(o.aval, "dtype"))
        mp_needed = any(is_mp(a) for a in ins) or (floats_out and any(_is_float(a) for a in ins if not _is_key(a)))
        if name == "scan":
            out = _scan(*ins, **eqn.params)
        elif name in _CALLS and _CALLS[name] in eqn.params:
            out = eval_jaxpr(*_closed(eqn.params[_CALLS[name]]), *ins)
        elif not mp_needed:
            out = eqn.primitive.bind(*ins, **eqn.params)
        elif name in _MOVES:
            out = _moved(eqn.primitive, ins, eqn.params)
        elif name in _RULES:
            out = _RULES[name](*ins, **eqn.params)
            if name in _BORN:
                _track(out)
        else:
            raise NotImplementedError(f"highprec: no 50-digit rule for the primitive {name!r}")
        outs = out if eqn.primitive.multiple_results or name in ("scan",) or name in _CALLS else [out]
        for v, o in zip(eqn.outvars, outs):
            env[v] = to_mp(o) if isinstance(o, mpmath.mpf) or (isinstance(o, np.ndarray) and o.dtype == object) else o
    return [_read(env, v) for v in jaxpr.outvars]


def _jaxpr_cost(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            total += eqn.params["length"] * _jaxpr_cost(eqn.params["jaxpr"].jaxpr)
        elif name in _CALLS and _CALLS[name] in eqn.params:
            total += _jaxpr_cost(_closed(eqn.params[_CALLS[name]])[0])
        else:
            total += sum(math.prod(getattr(o.aval, "shape", ())) for o in eqn.outvars)
    return total


def cost(fn, *args) -> int:
    """How many entry operations ``truth(fn, *args)`` evaluates per pass (each output entry of each equation, a
    scan's body times its length): traced only, nothing runs."""
    with jax.enable_x64(True):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        shaped = [jax.ShapeDtypeStruct(np.shape(a), np.float64) if _is_float(a) and not _is_key(a) else a for a in leaves]
        closed = jax.make_jaxpr(lambda *ls: fn(*jax.tree_util.tree_unflatten(treedef, ls)))(*shaped)
    return _jaxpr_cost(closed.jaxpr)


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def truth(fn, *args, digits: int = DIGITS, max_digits: int = 6400):
    """``fn(*args)`` evaluated in high-precision arithmetic, every float leaf of the result rounded to float64.

    ``fn`` is traced with x64 on at the shapes of ``args`` (pytrees; float leaves are taken exactly, whatever
    their dtype); integer and key leaves are passed as they are.

    The precision adapts to the numbers met. A fixed one would not do: a softmax row whose logits are 290
    apart has probabilities of 1e-126, and the gradient of its dominant entry, of that size, is
    y_k (dy_k - sum_i dy_i y_i), a difference of numbers of size 1 that any precision below 126 digits
    absorbs, EXACTLY as float64 does (1 - 1e-126 rounds to 1, dy_k - D to 0): two evaluations at 50 and
    100 digits then agree on a wrong 0. So a first pass at ``digits`` records the range of magnitudes
    that exponentials, sigmoids and erfc produce (where values far from 1 are born); the evaluation runs
    again with that range's decimal width (capped at float64's range) plus ``digits``, and at twice that,
    doubling until two
    successive results agree to 1e-6 of a float64 ulp on every entry. Raises ValueError if ``max_digits``
    is not enough.
    """
    with jax.enable_x64(True):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        shaped = [jax.ShapeDtypeStruct(np.shape(a), np.float64) if _is_float(a) and not _is_key(a) else a for a in leaves]
        closed, out_shape = jax.make_jaxpr(lambda *ls: fn(*jax.tree_util.tree_unflatten(treedef, ls)),
                                           return_shape=True)(*shaped)
        mp_args = [to_mp(a) if _is_float(a) and not _is_key(a) else a for a in leaves]

        def run(dps):
            with mpmath.workdps(dps):
                outs = eval_jaxpr(closed.jaxpr, closed.consts, *mp_args)
            return [to_float64(o) if _is_float(o) else np.asarray(o) for o in outs]

        _RANGE[:] = [0, 0]
        try:
            run(digits)
            # beyond float64's range (2^+-1075) a magnitude cannot reach a float64 result except as 0 or inf
            width = int((min(_RANGE[1], 1075) - max(_RANGE[0], -1075)) * math.log10(2)) + 1
        finally:
            _RANGE.clear()
        digits += width
        low = run(digits)
        while True:
            if 2 * digits > max_digits:
                raise ValueError(f"highprec: {max_digits} digits do not settle the result")
            digits *= 2
            high = run(digits)
            if all(_settled(a, b) for a, b in zip(low, high)):
                break
            low = high
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), high)


def _settled(a, b) -> bool:
    """The float64 roundings of two evaluations agree (to 1e-6 ulp: the higher one is then correctly rounded)."""
    if not np.issubdtype(a.dtype, np.floating):
        return np.array_equal(a, b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return bool(np.all(same | (np.abs(a - b) <= 1e-6 * np.spacing(np.abs(b)))))
