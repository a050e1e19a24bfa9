"""Finite differences vs manual backprop: both modes, kinks, bad arguments."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp


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


def test_crossed_relu_kink_is_flagged_not_failed():
    model = mbp.Sequential(mbp.Dense(3), mbp.ReLU(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 2), jnp.float64)
    pre = x @ params[0]["W"] + params[0]["b"][None]
    params = (dict(params[0], b=params[0]["b"] - pre[0]), *params[1:])  # example 0 sits exactly on every kink
    head, y = mbp.MeanSquaredError(), jnp.ones((4, 2))
    for mode in ("directions", "exhaustive"):
        report = mbp.gradcheck(model, head, params, x, y, mode=mode, eps=1e-3, k=2)
        assert report.ok, str(report)
        assert any("kink crossed" in r.note for r in report.rows), str(report)


def test_bad_arguments():
    model, head, params, x, y = _mlp()
    with pytest.raises(ValueError, match="gradcheck: mode must be 'directions' or 'exhaustive', got 'all'"):
        mbp.gradcheck(model, head, params, x, y, mode="all")
    with pytest.raises(ValueError, match=r"gradcheck: exhaustive mode .* the model has 79 parameters \(max_params=10\)"):
        mbp.gradcheck(model, head, params, x, y, mode="exhaustive", max_params=10)
    with pytest.raises(ValueError, match="gradcheck: k must be >= 1"):
        mbp.gradcheck(model, head, params, x, y, k=0)
