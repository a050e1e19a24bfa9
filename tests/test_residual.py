"""Residual(block): y = x + block(x), nested with Sequential; vs jax.grad, finite differences; bad blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp

HEAD = mbp.SoftmaxCrossEntropy()


def _normal(seed, shape, dtype=jnp.float32):
    """Standard normal test data from numpy (jax.random would compile a sampler for every new shape)."""
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)

def _model():
    return mbp.Sequential(
        mbp.Dense(6),
        mbp.Residual(mbp.Sequential(mbp.Dense(6), mbp.Tanh())),
        mbp.Residual(mbp.Residual(mbp.Sequential(mbp.LayerNorm(), mbp.Dense(6), mbp.ReLU()))),
        mbp.Dense(3),
    )


def _data(dtype, batch=4):
    x = _normal(1, (batch, 5), dtype)
    y = host(np.random.default_rng(2).integers(0, 3, (batch,)))
    return x, y


@pytest.mark.parametrize(("dtype", "batch"), [(jnp.float32, 4), (jnp.float64, 1)])
def test_nested_residual_matches_reference(dtype, batch):
    model = _model()
    params, _ = model.init(jax.random.key(0), (5,), dtype)
    x, y = _data(dtype, batch)
    report = mbp.compare(model, HEAD, params, x, y)
    assert report.ok, str(report)
    # the block's layers are named by their path under "block"
    report.row("2/block/block/1 Dense", "dW")


def test_residual_finite_differences():
    model = _model()
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    x, y = _data(jnp.float64)
    report = mbp.gradcheck(model, HEAD, params, x, y, mode="exhaustive")
    assert report.ok, str(report)


def test_check_layer_alone():
    layer = mbp.Residual(mbp.Sequential(mbp.Dense(5), mbp.Sigmoid()))
    params, shape = layer.init(jax.random.key(3), (2, 5), jnp.float64)
    assert shape == (2, 5)
    x = _normal(4, (3, 2, 5), jnp.float64)
    report = mbp.check_layer(layer, params, x, dy=_normal(5, x.shape, jnp.float64))
    assert report.ok, str(report)


def test_identity_path_passes_the_gradient_unchanged():
    # with a block whose weights are 0, dF/dx = 0 and dx = dy exactly
    layer = mbp.Residual(mbp.Dense(4, use_bias=False))
    params = {"W": jnp.zeros((4, 4), jnp.float32)}
    x = _normal(5, (3, 4))
    y, cache = layer.forward(params, x)
    dy = _normal(6, (3, 4))
    grads, dx = layer.backward(params, cache, dy)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dy))
    assert set(grads) == {"W"}


def test_kink_pattern_is_the_blocks():
    layer = mbp.Residual(mbp.Sequential(mbp.Dense(3), mbp.ReLU()))
    params, _ = layer.init(jax.random.key(0), (3,))
    _, cache = layer.forward(params, jnp.ones((2, 3), jnp.float32))
    pattern = layer.kink_pattern(cache)
    assert pattern[0] == () and pattern[1].shape == (2, 3)  # Dense makes no choice; ReLU's signs
    assert mbp.Residual(mbp.Tanh()).kink_pattern(None) == ()
    undeclared = mbp.Elementwise(jnp.abs, jnp.sign, label="abs")  # a user's fn: its choices are not declared
    assert mbp.Residual(undeclared).kink_pattern(None) is None


def test_block_changing_the_shape_fails_at_init():
    with pytest.raises(ValueError, match=r"Residual: the block Dense must keep its input's shape .* \(5,\) to \(3,\)"):
        mbp.Residual(mbp.Dense(3)).init(jax.random.key(0), (5,))


def test_block_changing_the_shape_fails_at_forward():
    params, _ = mbp.Dense(3).init(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"Residual: the block Dense must keep .* \(2, 5\) to \(2, 3\)"):
        mbp.Residual(mbp.Dense(3)).forward(params, jnp.ones((2, 5), jnp.float32))


def test_block_must_be_a_layer():
    with pytest.raises(TypeError, match=r"Residual: expected the block to be a layer .*got int 3"):
        mbp.Residual(3)


def test_residual_rejects_non_float_input():
    with pytest.raises(TypeError, match=r"Residual: expected x of a floating dtype, got int32\[2,3\]"):
        mbp.Residual(mbp.Tanh()).forward({}, jnp.ones((2, 3), jnp.int32))
