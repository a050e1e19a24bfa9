"""Sequential and Parallel (sequential.py): a fork and nested containers vs the reference and finite
differences, hashing, bad input."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp


def test_gated_block_compare_and_finite_differences():
    # y = Dense(x) * sigmoid(Dense(x)): a fork, a multiply node, nested Sequentials
    model = mbp.Sequential(
        mbp.Parallel(mbp.Dense(6), mbp.Sequential(mbp.Dense(6), mbp.Sigmoid())),
        mbp.Multiply(),
        mbp.Dense(3),
    )
    params, out_shape = model.init(jax.random.key(0), (5,), jnp.float64)
    assert out_shape == (3,)
    x = jax.random.normal(jax.random.key(1), (4, 5), jnp.float64)
    y = jnp.array([0, 1, 2, 1])
    head = mbp.SoftmaxCrossEntropy()
    report = mbp.compare(model, head, params, x, y)
    assert report.ok, str(report)
    labels = {r.layer for r in report.rows}
    assert {"0/0 Dense", "0/1/0 Dense", "0/1/1 Sigmoid", "1 Multiply", "2 Dense"} <= labels
    assert mbp.gradcheck(model, head, params, x, y, k=3).ok


def test_sequential_params_mismatch():
    model = mbp.Sequential(mbp.Dense(3), mbp.ReLU())
    params, _ = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Sequential: expected params as a tuple of 2 per-layer entries, got 1"):
        model.forward(params[:1], jnp.ones((2, 4)))
    with pytest.raises(TypeError, match=r"Sequential: expected layer \d to be a layer"):
        mbp.Sequential(mbp.Dense(3), "relu")


def test_sequential_is_hashable_and_nestable():
    inner = mbp.Sequential(mbp.Dense(3), mbp.Tanh())
    model = mbp.Sequential(inner, mbp.Dense(2))
    assert hash(model) == hash(mbp.Sequential(mbp.Sequential(mbp.Dense(3), mbp.Tanh()), mbp.Dense(2)))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 4), jnp.float64)
    assert mbp.check_layer(model, params, x).ok
