"""Finite differences vs manual backprop: both modes, the error estimate, kinks (one-sided, subgradient), bad arguments."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp import reference as ref


def _mlp():
    model = mbp.Sequential(mbp.Dense(6), mbp.ReLU(), mbp.Dense(4), mbp.Sigmoid(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (4, 5), jnp.float32)
    return model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0])


def test_directions_and_exhaustive_pass_in_float64_from_float32_inputs():
    model, head, params, x, y = _mlp()
    d = mbp.gradcheck(model, head, params, x, y, k=3)
    assert d.ok and d.dtype == "float64" and len(d.rows) == 6, str(d)
    e = mbp.gradcheck(model, head, params, x, y, mode="exhaustive")
    assert e.ok, str(e)
    assert {r.layer for r in e.rows} == {"0 Dense", "2 Dense", "4 Dense"}


def test_wrong_derivative_fails_finite_differences():
    bad_tanh = mbp.Elementwise(jnp.tanh, lambda x: 1 - jnp.tanh(x), label="bad_tanh")
    model = mbp.Sequential(mbp.Dense(4), bad_tanh, mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (3,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), params, x, jnp.zeros((5, 2)), mode="exhaustive")
    assert not report.ok
    assert report.first_failure.layer == "0 Dense"  # the layer below the wrong derivative gets wrong gradients
    assert report.row("2 Dense", "dW").ok


def test_a_point_on_relu_kinks_is_compared_one_sided_where_it_can_be():
    model = mbp.Sequential(mbp.Dense(3), mbp.ReLU(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 2), jnp.float64)
    pre = x @ params[0]["W"] + params[0]["b"][None]
    params = (dict(params[0], b=params[0]["b"] - pre[0]), *params[1:])  # example 0 sits exactly on every kink
    head, y = mbp.MeanSquaredError(), jnp.ones((4, 2))
    report = mbp.gradcheck(model, head, params, x, y, mode="exhaustive")
    assert report.ok, str(report)
    assert "one-sided" in report.row("0 Dense", "db").note, str(report)  # each bias moves one unit: one side stays put
    directions = mbp.gradcheck(model, head, params, x, y, k=2)
    assert directions.status != "FAIL", str(directions)


def test_a_verdict_over_zero_compared_rows_is_inconclusive():
    # issue 14, item 7: every unit of every example at a ReLU kink; random directions cross kinks on both sides
    model = mbp.Sequential(mbp.Dense(16), mbp.ReLU(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, jnp.zeros((4, 5)), jnp.array([0, 1, 2, 0]), k=3)
    assert report.status == "INCONCLUSIVE" and not report.ok, str(report)
    assert report.summary().startswith("INCONCLUSIVE: 0 of 6 rows compared; 6 not compared")
    assert "try mode='exhaustive'" in str(report)
    exhaustive = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, jnp.zeros((4, 5)), jnp.array([0, 1, 2, 0]),
                               mode="exhaustive")
    assert exhaustive.ok, str(exhaustive)


@dataclass(frozen=True)
class ReLUOneAtZero(mbp.Layer):
    """relu with relu'(0) = 1: the wrong convention (jax.nn.relu and manualbp.ReLU have relu'(0) = 0)."""

    def forward(self, params, x):
        return jnp.maximum(x, 0), x

    def backward(self, params, cache, dy):
        return {}, jnp.where(cache >= 0, dy, 0)

    def kink_pattern(self, cache):
        return cache > 0


ref.forward.register(ReLUOneAtZero)(lambda layer, params, x, taps: jax.nn.relu(x))


def test_relu_derivative_at_zero_is_checked_one_sided():
    # issue 14, item 12: with "kink crossed" rows skipped, relu'(0) = 1 slipped through gradcheck
    model = mbp.Sequential(mbp.Dense(4), ReLUOneAtZero(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 5), jnp.float64).at[0].set(0.0)  # example 0: z = b = 0, at the kink
    y = jnp.array([0, 1, 2, 0])
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y, mode="exhaustive")
    assert not report.ok, str(report)
    assert (report.first_failure.layer, report.first_failure.quantity) == ("0 Dense", "db"), str(report)
    assert "one-sided" in report.first_failure.note
    good = mbp.Sequential(mbp.Dense(4), mbp.ReLU(), mbp.Dense(3))
    assert mbp.gradcheck(good, mbp.SoftmaxCrossEntropy(), params, x, y, mode="exhaustive").ok


@dataclass(frozen=True)
class Abs(mbp.Layer):
    """y = |x| with the subgradient ``slope_at_zero`` at 0 (a subgradient iff it lies in [-1, 1])."""

    slope_at_zero: float = 0.0

    def forward(self, params, x):
        return jnp.abs(x), x

    def backward(self, params, cache, dy):
        return {}, dy * jnp.where(cache == 0, self.slope_at_zero, jnp.sign(cache))

    def kink_pattern(self, cache):
        return jnp.sign(cache)


ref.forward.register(Abs)(lambda layer, params, x, taps: jnp.abs(x))


def test_subgradient_at_a_single_kink_crossed_on_both_sides():
    x = jnp.array([[0.0], [0.7], [-1.3]])  # one entry exactly at the kink of |x|
    head, y = mbp.MeanSquaredError(), jnp.array([[0.4], [0.5], [0.6]])
    for slope, ok in ((0.0, True), (0.5, True), (2.0, False)):
        model = mbp.Sequential(Abs(slope), mbp.Dense(1))
        params = ({}, {"W": jnp.array([[0.8]]), "b": jnp.array([0.1])})
        report = mbp.gradcheck(model, head, params, x, y, k=1)
        row = report.row("model Sequential", "dL/dx . v0")
        assert "subgradient" in row.note and row.ok == ok, str(report)


def test_small_directional_derivatives_are_judged_by_the_error_estimate():
    # issue 14, item 12: correct models failed on dL/dx . v rows with |error| ~ 1e-10, the rounding noise of the
    # finite difference, against a 1e-6 relative tolerance on a small derivative; here dL/dx ~ 1e-6
    model = mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    params = ({"W": params[0]["W"] * 1e-6, "b": params[0]["b"]}, *params[1:])
    x = jax.random.normal(jax.random.key(1), (4, 5), jnp.float64)
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0]), k=4)
    assert report.ok, str(report)
    assert all(r.err_ref is not None for r in report.rows)  # every row carries its estimated error
    bad = mbp.Sequential(mbp.Dense(6), mbp.Elementwise(jnp.tanh, lambda z: 1.01 * (1 - jnp.tanh(z) ** 2)), mbp.Dense(3))
    wrong = mbp.gradcheck(bad, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0]), k=4)
    assert not any(r.ok for r in wrong.rows if r.quantity.startswith("dL/dx")), str(wrong)  # a 1% error still fails


@pytest.mark.parametrize("seed", range(3))
def test_correct_models_pass_finite_differences(seed):
    """The reduced clean matrix (scripts/verdict_matrix.py): activations, an LSTM, a Multiply node."""
    acts = mbp.Sequential(mbp.Dense(6), mbp.Sigmoid(), mbp.Dense(6), mbp.Softplus(), mbp.Dense(6), mbp.GELU(),
                          mbp.Dense(6), mbp.Tanh(), mbp.Dense(3))
    mult = mbp.Sequential(mbp.Dense(6), mbp.Parallel(mbp.Sequential(mbp.Dense(6), mbp.Tanh()), mbp.Dense(6)),
                          mbp.Multiply(), mbp.Dense(3))
    lstm = mbp.Sequential(mbp.LSTM(5, return_sequences=False), mbp.Dense(3))
    for model, shape in ((acts, (5,)), (mult, (5,)), (lstm, (4, 3))):
        params, _ = model.init(jax.random.key(seed), shape, jnp.float64)
        x = jax.random.normal(jax.random.key(10 + seed), (4, *shape), jnp.float64)
        report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0]), k=8,
                               key=jax.random.key(seed))
        assert report.ok, str(report)


def test_bad_arguments():
    model, head, params, x, y = _mlp()
    with pytest.raises(ValueError, match="gradcheck: mode must be 'directions' or 'exhaustive', got 'all'"):
        mbp.gradcheck(model, head, params, x, y, mode="all")
    with pytest.raises(ValueError, match=r"gradcheck: exhaustive mode .* the model has 79 parameters \(max_params=10\)"):
        mbp.gradcheck(model, head, params, x, y, mode="exhaustive", max_params=10)
    with pytest.raises(ValueError, match="gradcheck: k must be an int >= 1, got 0"):
        mbp.gradcheck(model, head, params, x, y, k=0)
