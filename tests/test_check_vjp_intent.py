"""check_vjp for rules meant to differ from the gradient (expected_vjp, the linearity row, where=), and what a user
expects of names, options and messages (parameter names, keyword arguments, rtol/atol, errors by phase, wording for a
foreign function, raise_if_failed and assert_vjp)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.testing import assert_vjp
from manualbp.verify import forensics as fx

RNG = np.random.default_rng(1)


def host(a):
    return jax.device_put(np.asarray(a))


def custom(fun, fwd, bwd):
    f = jax.custom_vjp(fun)
    f.defvjp(fwd, bwd)
    return f


X = host(RNG.standard_normal(6) * 2)


def straight_through(factor=1.0):
    """round(x) forward, the identity backward (a straight-through estimator): not the gradient (0 almost everywhere)."""
    def ste_round(x):
        return jnp.round(x)

    return custom(ste_round, lambda x: (jnp.round(x), None), lambda _, dy: (factor * dy,))


def identity_rule(primals, cotangent):
    del primals
    return (cotangent,)


def test_an_intended_rule_is_checked_instead_of_the_gradient():
    right = mbp.check_vjp(straight_through(), jnp.round, X, expected_vjp=identity_rule, jit=True)
    assert right.ok, right
    assert "the intended rule identity_rule (expected_vjp, not the gradient)" in right.title
    assert right.row("ste_round", "output").ok  # the reference still checks the forward
    wrong = mbp.check_vjp(straight_through(0.5), None, X, expected_vjp=identity_rule, jit=True)
    assert wrong.first_failure.quantity == "x" and wrong.first_failure.diagnosis.kind == fx.SCALE, wrong
    assert wrong.first_failure.diagnosis.params["fraction"] == "1/2"


def test_the_stop_gradient_reference_pattern_states_the_same_intent():
    """x + stop_gradient(round(x) - x): forward round(x), and jax.vjp of it is the identity: a reference for an STE."""
    reference = lambda x: x + jax.lax.stop_gradient(jnp.round(x) - x)  # noqa: E731
    assert mbp.check_vjp(straight_through(), reference, X, jit=True).ok
    assert not mbp.check_vjp(straight_through(-1.0), reference, X, jit=True).ok


def test_a_backward_that_clips_its_cotangent_is_reported_not_linear_whatever_it_is_compared_with():
    def clip_rule(primals, cotangent):
        del primals
        return (jnp.clip(cotangent, -1, 1),)

    clipped = custom(lambda x: x * 1.0, lambda x: (x * 1.0, None), lambda _, dy: (jnp.clip(dy, -1, 1),))
    report = mbp.check_vjp(clipped, None, X, expected_vjp=clip_rule, jit=True)
    assert report.row("<lambda>", "x").ok  # it does what its author intends...
    row = report.row("<lambda>", "x linear in cotangent")  # ...which is not a linear map of the cotangent
    assert not row.ok and "not linear in its cotangent" in row.note, report
    assert report.first_failure is row


def test_where_excludes_points_and_counts_them():
    """A ReLU whose rule takes relu'(0) = 1, against jax.nn.relu (relu'(0) = 0), at points with exact zeros."""
    x = host(np.array([-1.5, 0.0, 2.0, 0.0, 0.5, -0.2]))
    relu = custom(lambda x: jnp.maximum(x, 0), lambda x: (jnp.maximum(x, 0), x), lambda x, dy: (dy * (x >= 0),))
    plain = mbp.check_vjp(relu, jax.nn.relu, x, jit=True)
    assert plain.first_failure.quantity == "x" and plain.first_failure.diagnosis.kind == fx.LOCALISED, plain
    excluded = mbp.check_vjp(relu, jax.nn.relu, x, where={"x": x != 0}, jit=True)
    assert excluded.ok and "2 of 6 entries excluded (where=)" in excluded.row("<lambda>", "x").note, excluded
    everything = mbp.check_vjp(relu, jax.nn.relu, x, where=lambda x: {"x": np.zeros(6, bool)}, jit=True)
    assert not everything.row("<lambda>", "x").compared and "excluded" in everything.summary(), everything
    with pytest.raises(ValueError, match=r"where= names \['y'\], which are not differentiated inputs; they are \['x'\]"):
        mbp.check_vjp(relu, jax.nn.relu, x, where={"y": x != 0})
    with pytest.raises(ValueError, match=r"must be a boolean array of x's shape \(6,\)"):
        mbp.check_vjp(relu, jax.nn.relu, x, where={"x": np.ones(5, bool)})


def test_where_keeps_finite_differences_off_the_excluded_points():
    x = host(np.array([-1.5, 0.0, 2.0, 0.0, 0.5, -0.2]))
    relu = custom(lambda x: jnp.maximum(x, 0), lambda x: (jnp.maximum(x, 0), x), lambda x, dy: (dy * (x >= 0),))
    report = mbp.check_vjp(relu, None, x, where={"x": x != 0}, k=2, jit=True)
    assert report.row("<lambda>", "x").ok and "2 of 6 entries excluded" in report.row("<lambda>", "x").note, report


def test_rtol_and_atol_are_the_callers_and_stated_in_the_header():
    """A reference that is only approximately the same computation: sin plus a term of order 1e-7."""
    sin = custom(jnp.sin, lambda x: (jnp.sin(x), x), lambda x, dy: (dy * jnp.cos(x),))
    approx = lambda x: jnp.sin(x) + 1e-7 * x**2  # noqa: E731
    assert mbp.check_vjp(sin, approx, X, jit=True).status == "FAIL"
    loose = mbp.check_vjp(sin, approx, X, rtol=1e-5, atol=1e-9, jit=True)
    assert loose.ok and loose.verdict == "fixed", loose
    assert "rtol=1e-05 (elementwise 1e-05), atol=1e-09 given" in loose.title
    assert "norm rel <= 1e-05, max rel <= 1e-05, + atol 1e-09" in str(loose).splitlines()[0]
    assert not mbp.check_vjp(sin, approx, X, rtol=1e-9, jit=True).ok
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        mbp.check_vjp(sin, approx, X, rtol=-1.0)


def attention(q, k, v, *, causal=False, temperature=None):
    """A function with parameter names, a static keyword option and a differentiable keyword argument."""
    s = q @ k.T * (1.0 if temperature is None else temperature)
    if causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape, bool)), s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


def test_rows_carry_the_functions_own_names_and_keyword_arguments_pass_through():
    q, k, v = (host(RNG.standard_normal((3, 2))) for _ in range(3))
    t = host(np.float64(0.7))
    report = mbp.check_vjp(functools.partial(attention, causal=True), attention, q, k, v,
                           kwargs={"temperature": t, "causal": True}, k=1, jit=True)
    assert report.ok, report
    assert [r.quantity for r in report.rows[:5]] == ["output", "q", "k", "v", "temperature"]
    assert {r.layer for r in report.rows} == {"attention"}  # a partial's real name
    only_t = mbp.check_vjp(attention, attention, q, k, v, kwargs={"temperature": t}, argnums="temperature", k=1,
                           jit=True)
    assert [r.quantity for r in only_t.rows][:2] == ["output", "temperature"]

    def stacked(*xs):
        return sum(xs)

    assert [r.quantity for r in mbp.check_vjp(stacked, stacked, q, k, k=1, jit=True).rows[:3]] == [
        "output", "xs[0]", "xs[1]"]


def test_an_error_inside_fn_its_backward_or_the_reference_names_the_phase():
    def broadcasting(x):
        return x + jnp.ones(4)  # (6,) + (4,): the rule's own forward is wrong

    with pytest.raises(TypeError, match=r"check_vjp: the forward of broadcasting raised TypeError: add got incompatible"):
        mbp.check_vjp(broadcasting, None, X)
    bad_bwd = custom(jnp.sin, lambda x: (jnp.sin(x), x), lambda x, dy: (dy @ jnp.ones((4, 4)),))
    with pytest.raises(TypeError, match=r"check_vjp: the backward of sin raised TypeError"):
        mbp.check_vjp(bad_bwd, jnp.sin, X)

    def reference(x):
        raise ValueError("no such mode")

    with pytest.raises(ValueError, match=r"check_vjp: the reference reference raised ValueError: no such mode"):
        mbp.check_vjp(jnp.sin, reference, X)


def test_the_wording_fits_a_foreign_function_and_compare_keeps_its_own():
    def zero(x):
        return 0.0 * x

    leaky = custom(zero, lambda x: (0.0 * x, None), lambda _, dy: (dy,))  # the gradient is 0 everywhere; this gives dy
    report = mbp.check_vjp(leaky, zero, X, jit=True)
    text = str(report) + "\n".join(str(d) for d in report.diagnose())
    for word in ("manual", "layer", "exploding"):
        assert word not in text.lower(), text
    assert report.subject == "function" and report.manual == "fn"
    failing = report.row("zero", "x")
    assert "max rel 0.00e+00" not in report.summary() and "ref~0" in str(report)
    assert "they differ only where the reference is (near) zero" in report.summary(), report.summary()
    assert failing.diagnosis.worst and failing.diagnosis.worst[0][2] == 0.0  # (index, got, want): want is 0

    class Doubled(mbp.Dense):
        def backward(self, params, cache, dy):
            grads, dx = super().backward(params, cache, dy)
            return {**grads, "b": 2 * grads["b"]}, dx

    model = mbp.Sequential(Doubled(2))
    params = model.init(jax.random.key(0), (3,), jnp.float64)[0]
    compared = mbp.compare(model, mbp.MeanSquaredError(), params, host(RNG.standard_normal((4, 3))),
                           host(RNG.standard_normal((4, 2))))
    assert str(compared).splitlines()[1].startswith("layer") and compared.manual == "manual"
    assert "manual = 2 x reference" in str(compared.first_failure.diagnosis)


def test_raise_if_failed_and_assert_vjp_drop_into_a_test_suite():
    sin = custom(jnp.sin, lambda x: (jnp.sin(x), x), lambda x, dy: (dy * jnp.cos(x),))
    assert assert_vjp(sin, jnp.sin, X, k=1).ok
    wrong = custom(jnp.sin, lambda x: (jnp.sin(x), x), lambda x, dy: (-dy * jnp.cos(x),))
    with pytest.raises(AssertionError, match=r"(?s)FAIL: check_vjp: sin vs jax.vjp of sin.*diagnosis: fn = -1 x"):
        assert_vjp(wrong, jnp.sin, X, k=1)
    nothing = mbp.check_vjp(sin, None, X, where={"x": np.zeros(6, bool)}, k=1, jit=True)
    assert nothing.status == "INCONCLUSIVE" and not any(r.compared for r in nothing.rows), nothing
    with pytest.raises(AssertionError, match="INCONCLUSIVE"):
        nothing.raise_if_failed()
