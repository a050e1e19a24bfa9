"""Add and Multiply (nodes.py): the computational graph's rules vs the reference, bad input."""

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
    _, (da, db) = mbp.Add().backward({}, mbp.Add().forward({}, (a, b))[1], dy)
    assert (float(da[0, 0]), float(db[0, 0])) == (5.0, 5.0)
    _, cache = mbp.Multiply().forward({}, (a, b))
    _, (da, db) = mbp.Multiply().backward({}, cache, dy)
    assert (float(da[0, 0]), float(db[0, 0])) == (15.0, 10.0)  # dy * other input


def test_node_shape_mismatch_and_non_pair():
    with pytest.raises(ValueError, match=r"Add: expected a and b of one shape and dtype, got a float32\[2,3\] and b float32\[2,1\]"):
        mbp.Add().forward({}, (jnp.ones((2, 3), jnp.float32), jnp.ones((2, 1), jnp.float32)))
    with pytest.raises(TypeError, match=r"Multiply: expected a pair \(a, b\) of arrays"):
        mbp.Multiply().forward({}, jnp.ones((2, 3)))
