"""Add/Multiply (computational-graph rules), Parallel and Sequential containers."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("node", [mbp.Add(), mbp.Multiply()], ids=["add", "multiply"])
def test_node_matches_reference(node, dtype):
    a = jax.random.normal(jax.random.key(0), (3, 4), dtype)
    b = jax.random.normal(jax.random.key(1), (3, 4), dtype)
    report = mbp.check_layer(node, {}, (a, b))
    assert report.ok, str(report)
    assert {r.quantity for r in report.rows} == {"forward y", "dL/dx.0", "dL/dx.1"}


def test_add_passes_gradient_and_multiply_swaps_inputs():
    a, b, dy = jnp.array([[2.0]]), jnp.array([[3.0]]), jnp.array([[5.0]])
    _, (da, db) = mbp.Add().backward({}, None, dy)
    assert (float(da[0, 0]), float(db[0, 0])) == (5.0, 5.0)
    _, cache = mbp.Multiply().forward({}, (a, b))
    _, (da, db) = mbp.Multiply().backward({}, cache, dy)
    assert (float(da[0, 0]), float(db[0, 0])) == (15.0, 10.0)  # dy * other input


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


def test_node_shape_mismatch_and_non_pair():
    with pytest.raises(ValueError, match=r"Add: expected a and b of one shape and dtype, got a float32\[2,3\] and b float32\[2,1\]"):
        mbp.Add().forward({}, (jnp.ones((2, 3), jnp.float32), jnp.ones((2, 1), jnp.float32)))
    with pytest.raises(TypeError, match=r"Multiply: expected a pair \(a, b\) of arrays"):
        mbp.Multiply().forward({}, jnp.ones((2, 3)))


def test_sequential_params_mismatch():
    model = mbp.Sequential(mbp.Dense(3), mbp.ReLU())
    params, _ = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Sequential: expected params as a tuple of 2 per-layer entries, got 1"):
        model.forward(params[:1], jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="Sequential: .* is not a layer"):
        mbp.Sequential(mbp.Dense(3), "relu")


def test_sequential_is_hashable_and_nestable():
    inner = mbp.Sequential(mbp.Dense(3), mbp.Tanh())
    model = mbp.Sequential(inner, mbp.Dense(2))
    assert hash(model) == hash(mbp.Sequential(mbp.Sequential(mbp.Dense(3), mbp.Tanh()), mbp.Dense(2)))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 4), jnp.float64)
    assert mbp.check_layer(model, params, x).ok
