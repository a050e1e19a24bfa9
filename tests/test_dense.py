"""Dense (dense.py): manual vs jax.vjp of the reference (x dtype x jit), time-distributed, bad input."""

import jax
import jax.numpy as jnp
import pytest
from arrays import RUN_IDS, RUNS

import manualbp as mbp


def _x(dtype, shape=(3, 4)):
    x = 3 * jax.random.normal(jax.random.key(1), shape, dtype)
    return x.at[0, :2].set(0.0)  # exact zeros: the convention at the kink is tested too


@pytest.mark.parametrize("dtype, jit", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("layer", [mbp.Dense(5), mbp.Dense(5, use_bias=False)], ids=lambda layer: repr(layer)[:40])
def test_layer_matches_reference(layer, dtype, jit):
    x = _x(dtype)
    params, out_shape = layer.init(jax.random.key(0), x.shape[1:], dtype)
    report = mbp.check_layer(layer, params, x, jit=jit)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == (3, *out_shape)


def test_dense_time_distributed():
    layer = mbp.Dense(6)
    x = jax.random.normal(jax.random.key(2), (2, 3, 4), jnp.float64)
    params, out_shape = layer.init(jax.random.key(0), (3, 4), jnp.float64)
    assert out_shape == (3, 6)
    assert mbp.check_layer(layer, params, x).ok


def test_dense_wrong_feature_size():
    layer = mbp.Dense(3)
    params, _ = layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Dense: expected x with last axis 4 .*got x of shape \(2, 5\)"):
        layer.forward(params, jnp.ones((2, 5)))


def test_dense_rank_zero_and_integer_and_mixed_dtype():
    layer = mbp.Dense(3)
    params, _ = layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Dense: expected x of rank >= 1, got shape \(\)"):
        layer.forward(params, jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"Dense: expected x of a floating dtype, got int32\[2,4\]"):
        layer.forward(params, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(TypeError, match=r"Dense: x has dtype float64 but W has float32"):
        layer.forward(params, jnp.ones((2, 4), jnp.float64))


def test_dense_params_mismatch():
    layer = mbp.Dense(3)
    params, _ = layer.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"Dense: expected params with keys \['W', 'b'\], got \['W'\]"):
        layer.forward({"W": params["W"]}, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="Dense: features must be a positive int"):
        mbp.Dense(0)
    with pytest.raises(ValueError, match="Dense: features must be a positive int, got True"):
        mbp.Dense(True)  # a bool is an int to Python, not a width
