"""Softmax (softmax.py): vs jax.grad (both dtypes, jit and not), finite differences, bad input."""

import jax
import jax.numpy as jnp
import pytest
from arrays import normal

import manualbp as mbp


@pytest.mark.parametrize(("dtype", "axis", "jit"), [(jnp.float32, -1, True), (jnp.float64, 1, False)])
def test_softmax_matches_reference(dtype, axis, jit):
    report = mbp.check_layer(mbp.Softmax(axis), {}, 3 * normal(0, (2, 5, 3), dtype), jit=jit)
    assert report.ok, str(report)


def test_softmax_finite_differences_and_rows_sum_to_one():
    model = mbp.Sequential(mbp.Dense(4), mbp.Softmax(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    x, y = normal(1, (6, 5)), jnp.arange(6) % 3
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.ok, str(report)
    p, _ = mbp.Softmax().forward({}, 100 * x)  # large logits: the max shift keeps e^x finite
    assert jnp.allclose(jnp.sum(p, axis=-1), 1, rtol=0, atol=1e-15) and jnp.all(jnp.isfinite(p))


def test_softmax_bad_input():
    with pytest.raises(ValueError, match=r"Softmax: axis 2 is out of range for x of shape \(3, 4\)"):
        mbp.Softmax(2).forward({}, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"Softmax: takes no parameters"):
        mbp.Softmax().forward({"W": jnp.ones(2)}, jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"Softmax: axis must be an int"):
        mbp.Softmax(1.0)
