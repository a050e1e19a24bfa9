"""check_vjp on users' jax.custom_vjp rules: five kinds of function, each right rule passes and a wrong one is named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp


def custom(fun, fwd, bwd):
    f = jax.custom_vjp(fun)
    f.defvjp(fwd, bwd)
    return f


def _normal(shape, dtype=jnp.float64, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# --- elementwise: softplus, f' = sigmoid
def _softplus(x):
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))  # stable: never exponentiates a large positive x


def softplus(wrong=False):
    def bwd(x, dy):  # the wrong one uses the sigmoid's own derivative, s (1 - s)
        s = jax.nn.sigmoid(x)
        return (dy * (s * (1 - s) if wrong else s),)

    return custom(_softplus, lambda x: (_softplus(x), x), bwd)


# --- reduction: log-sum-exp over the last axis, d/dx = softmax(x)
def _lse(x):
    m = jnp.max(x, axis=-1)
    return m + jnp.log(jnp.sum(jnp.exp(x - m[..., None]), axis=-1))


def logsumexp(wrong=False):
    def bwd(res, dy):  # the wrong one forgets the incoming cotangent dy
        x, y = res
        p = jnp.exp(x - y[..., None])
        return (p if wrong else dy[..., None] * p,)

    return custom(_lse, lambda x: (_lse(x), (x, _lse(x))), bwd)


# --- matrix: C = A B, dA = dC B^T, dB = A^T dC
def matmul(wrong=False):
    def bwd(res, dc):  # the wrong one forgets the transpose of B (square matrices: the shapes still fit)
        a, b = res
        return (dc @ (b if wrong else b.T), a.T @ dc)

    return custom(jnp.matmul, lambda a, b: (a @ b, (a, b)), bwd)


# --- pytree input: a dense layer f({W, b}, x) = x W + b
def _dense(p, x):
    return x @ p["W"] + p["b"][None, :]


def dense(wrong=False):
    def bwd(res, dy):  # the wrong one averages db over the batch instead of summing
        p, x = res
        db = jnp.mean(dy, axis=0) if wrong else jnp.sum(dy, axis=0)
        return ({"W": x.T @ dy, "b": db}, dy @ p["W"].T)

    return custom(_dense, lambda p, x: (_dense(p, x), (p, x)), bwd)


# --- integer side input: rows of a table by id; ids used twice must add up
def _take(table, ids):
    return table[ids]


def take(wrong=False):
    def bwd(res, dy):  # the wrong one writes (.set) where repeated ids must add (.add)
        shape, ids = res
        at = jnp.zeros(shape, dy.dtype).at[ids]
        return (at.set(dy) if wrong else at.add(dy), None)

    return custom(_take, lambda table, ids: (table[ids], (table.shape, ids)), bwd)


def _dense_args():
    return ({"W": _normal((3, 2), seed=1), "b": _normal((2,), seed=2)}, _normal((4, 3), seed=3))


KINDS = {  # name -> (rule maker, reference, args, the row the wrong rule fails first)
    "elementwise": (softplus, jax.nn.softplus, lambda: (_normal((3, 4)),), "x"),
    "reduction": (logsumexp, lambda x: jax.nn.logsumexp(x, axis=-1), lambda: (_normal((3, 5)),), "x"),
    "matrix": (matmul, lambda a, b: a @ b, lambda: (_normal((4, 4), seed=1), _normal((4, 4), seed=2)), "a"),
    "pytree": (dense, lambda p, x: x @ p["W"] + p["b"][None, :], _dense_args, "p['b']"),
    "integer side input": (take, lambda t, i: t[i], lambda: (_normal((5, 3)), jnp.array([0, 2, 2, 4, 0, 1])), "table"),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("kind", KINDS)
def test_right_rule_passes_and_wrong_rule_is_named(kind, jit):
    make, reference, args, failing = KINDS[kind]
    good = mbp.check_vjp(make(), reference, *args(), jit=jit)
    assert good.ok, str(good)
    bad = mbp.check_vjp(make(wrong=True), reference, *args(), jit=jit)
    assert not bad.ok
    assert bad.first_failure.quantity == failing, str(bad)
    assert bad.rows[0].quantity == "output" and bad.rows[0].ok  # the forward is right; the backward is not


def test_rows_are_named_by_parameter_path_and_side_inputs_have_none():
    report = mbp.check_vjp(dense(), lambda p, x: x @ p["W"] + p["b"][None, :], *_dense_args())
    assert [r.quantity for r in report.rows] == [
        "output", "p['W']", "p['b']", "x",
        "p['W'] backward twice", "p['b'] backward twice", "x backward twice",
        "p['W'] linear in cotangent", "p['b'] linear in cotangent", "x linear in cotangent",
        "p['W'] vmap over cotangents", "p['b'] vmap over cotangents", "x vmap over cotangents"]
    assert report.row("_dense", "p['W']").shape == (3, 2)
    only_x = mbp.check_vjp(dense(), lambda p, x: x @ p["W"] + p["b"][None, :], *_dense_args(), argnums=1)
    assert {r.quantity for r in only_x.rows} == {"output", "x", "x linear in cotangent", "x backward twice",
                                                 "x vmap over cotangents"}
    assert only_x.rows == mbp.check_vjp(dense(), lambda p, x: x @ p["W"] + p["b"][None, :], *_dense_args(),
                                        argnums="x").rows
    ids = mbp.check_vjp(take(), lambda t, i: t[i], _normal((5, 3)), jnp.array([0, 2, 2]))
    assert not any(r.quantity.startswith("ids") for r in ids.rows)


def test_tuple_outputs_and_float32_with_a_float64_truth():
    def fwd(x):
        return (jnp.sin(x), jnp.cos(x)), x

    def bwd(x, dys, sign=1):
        return (dys[0] * jnp.cos(x) + sign * dys[1] * jnp.sin(x),)  # right: d cos = -sin, so sign = -1

    x = _normal((6,), jnp.float32)
    right = custom(lambda x: (jnp.sin(x), jnp.cos(x)), fwd, lambda x, dys: bwd(x, dys, -1))
    wrong = custom(lambda x: (jnp.sin(x), jnp.cos(x)), fwd, bwd)
    reference = lambda x: (jnp.sin(x), jnp.cos(x))  # noqa: E731
    good = mbp.check_vjp(right, reference, x)
    assert good.ok and good.dtype == "float32" and [r.quantity for r in good.rows[:2]] == ["output[0]", "output[1]"]
    bad = mbp.check_vjp(wrong, reference, x)
    assert bad.first_failure.quantity == "x"
    fail = bad.first_failure  # the failing side is far from the float64 truth, the reference not
    assert fail.err_manual > 0.1 and fail.err_ref < 1e-6
    assert "vs the high-precision truth: fn" in bad.summary()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_backward_that_reads_a_stash_of_the_forward_fails_backward_twice(jit):
    """The forward keeps its input in a global instead of the residuals: right once, wrong after another forward."""
    stash = {}

    def fwd(x):
        stash["x"] = x
        return x**2, None

    def square(x):
        return x**2

    square = custom(square, fwd, lambda _, dy: (2 * stash["x"] * dy,))
    report = mbp.check_vjp(square, lambda x: x**2, _normal((5,)), k=1, jit=jit)
    assert not report.ok
    assert report.first_failure.quantity == "x backward twice", str(report)
    if not jit:  # op by op the stash holds arrays: the first call is right, only the repeat is wrong
        assert report.row("square", "x").ok
        assert "hidden state" in report.first_failure.note


def test_a_backward_that_cannot_be_batched_fails_its_vmap_row():
    def bwd(x, dy):
        return (jnp.asarray(np.cos(np.asarray(x)) * np.asarray(dy)),)  # NumPy on the host: no tracer gets through

    sin = custom(jnp.sin, lambda x: (jnp.sin(x), x), bwd)
    report = mbp.check_vjp(sin, jnp.sin, _normal((4,)))
    assert report.row("sin", "x").ok and report.row("sin", "x backward twice").ok
    row = report.row("sin", "x vmap over cotangents")
    assert not row.ok and "does not run under jax.vmap" in row.note


def test_a_prng_key_is_a_side_input():
    """Dropout with its key as an input: the key gets no row, the mask's gradient is checked."""

    def dropout(x, key):
        return jnp.where(jax.random.bernoulli(key, 0.5, x.shape), 2 * x, 0)

    def bwd(keep, dy):
        return (jnp.where(keep, 2 * dy, 0), None)

    rule = custom(dropout, lambda x, key: (dropout(x, key), jax.random.bernoulli(key, 0.5, x.shape)), bwd)
    report = mbp.check_vjp(rule, dropout, _normal((3, 4)), jax.random.key(7))
    assert report.ok and [r.quantity for r in report.rows][:2] == ["output", "x"]
    assert not any(r.quantity.startswith("key") for r in report.rows)


def test_nondet_tol_admits_a_backward_nondeterministic_by_design():
    """Like an atomic scatter-add on a GPU: each call rounds differently. Bitwise by default, as torch's gradcheck."""
    rng = np.random.default_rng(0)

    def bwd(x, dy):
        return (2 * x * dy + float(rng.uniform(-1e-13, 1e-13)),)  # host-side noise, a new draw on every call

    square = custom(lambda x: x**2, lambda x: (x**2, x), bwd)
    strict = mbp.check_vjp(square, lambda x: x**2, _normal((4,)))
    assert strict.first_failure.quantity == "x backward twice" and "nondet_tol" in strict.first_failure.note
    assert mbp.check_vjp(square, lambda x: x**2, _normal((4,)), nondet_tol=1e-12).ok
    with pytest.raises(ValueError, match="nondet_tol must be >= 0"):
        mbp.check_vjp(square, lambda x: x**2, _normal((4,)), nondet_tol=-1.0)


@pytest.mark.parametrize("dtype, factor", [(jnp.bfloat16, 1.1), (jnp.float16, 1.01)], ids=["bfloat16", "float16"])
def test_low_precision_is_judged_by_the_error_model(dtype, factor):
    """A right rule passes and a wrong one fails, in bfloat16/float16, against the float64 truth.

    The wrong rule is off by a few units of the dtype's rounding (bfloat16 keeps 8 bits: eps 2^-7, so
    a 1% error is rounding there; float16 keeps 11 bits).
    """
    def fwd(x):
        return jnp.tanh(x), jnp.tanh(x)

    def right(y, dy):
        return (dy * (1 - y) * (1 + y),)

    def wrong(y, dy):
        return (dy * (1 - y) * (1 + y) * jnp.asarray(factor, y.dtype),)

    x = _normal((64,), jnp.float32).astype(dtype) * 2
    good = mbp.check_vjp(custom(jnp.tanh, fwd, right), jnp.tanh, x)
    assert good.verdict == "error-model" and good.ok, good
    assert good.row("tanh", "x").rule == "error-model" and good.row("tanh", "x").err_manual is not None
    bad = mbp.check_vjp(custom(jnp.tanh, fwd, wrong), jnp.tanh, x, k=4)
    assert not bad.ok and bad.first_failure.quantity == "x", bad


def test_error_model_verdict_for_float64_is_refused():
    with pytest.raises(ValueError, match="verdict 'error-model' needs"):
        mbp.check_vjp(jnp.sin, jnp.cos, _normal((3,), jnp.float64), verdict="error-model")
