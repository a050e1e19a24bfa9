"""Every activation (activations.py): manual vs jax.vjp of the reference (x dtype x jit), vs finite differences,
the conventions at the kinks, ReLU's packed mask, bad input."""

import jax
import jax.numpy as jnp
import pytest
from arrays import RUN_IDS, RUNS

import manualbp as mbp

ACTIVATIONS = [
    mbp.Identity(), mbp.Sigmoid(), mbp.Tanh(), mbp.ReLU(), mbp.LeakyReLU(0.1), mbp.Softplus(),
    mbp.GELU(approximate=True), mbp.GELU(approximate=False),
    mbp.Elementwise(lambda x: x * jax.nn.sigmoid(x),
                    lambda x: jax.nn.sigmoid(x) * (1 + x * (1 - jax.nn.sigmoid(x))), label="swish"),
]


def _x(dtype, shape=(3, 4)):
    x = 3 * jax.random.normal(jax.random.key(1), shape, dtype)
    return x.at[0, :2].set(0.0)  # exact zeros: the convention at the kink is tested too


@pytest.mark.parametrize("dtype, jit", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("layer", ACTIVATIONS, ids=lambda layer: repr(layer)[:40])
def test_layer_matches_reference(layer, dtype, jit):
    x = _x(dtype)
    params, out_shape = layer.init(jax.random.key(0), x.shape[1:], dtype)
    report = mbp.check_layer(layer, params, x, jit=jit)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == (3, *out_shape)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda layer: repr(layer)[:40])
def test_against_finite_differences(act):
    model = mbp.Sequential(mbp.Dense(6), act, mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), params, x, y, k=3)
    assert report.ok, str(report)


def test_relu_derivative_at_zero_is_zero_and_leaky_is_one():
    x = jnp.zeros((1, 3))
    dy = jnp.ones((1, 3))
    _, dx = mbp.ReLU().backward({}, mbp.ReLU().forward({}, x)[1], dy)
    assert jnp.array_equal(dx, jnp.zeros((1, 3)))
    _, dx = mbp.LeakyReLU(0.2).backward({}, mbp.LeakyReLU(0.2).forward({}, x)[1], dy)
    assert jnp.array_equal(dx, jnp.ones((1, 3)))


def test_sigmoid_derivative_at_most_a_quarter():
    x = jnp.linspace(-6, 6, 101)[None]
    layer = mbp.Sigmoid()
    _, dx = layer.backward({}, layer.forward({}, x)[1], jnp.ones_like(x))
    assert float(dx.max()) == pytest.approx(0.25)
    assert float(dx.max()) <= 0.25


def test_activation_rejects_integers():
    with pytest.raises(TypeError, match="Tanh: expected x of a floating dtype"):
        mbp.Tanh().forward({}, jnp.arange(3))


def test_large_relu_caches_a_packed_mask_and_matches_reference():
    """Inputs of >= 2^20 elements cache [x > 0] packed 8 to a byte instead of x (see activations.py)."""
    x = jax.random.normal(jax.random.key(3), (2, 64, 64, 128), jnp.float32).at[0, 0, 0, :8].set(0.0)
    relu = mbp.ReLU()
    _, cache = relu.forward({}, x)
    assert cache.dtype == jnp.uint8 and cache.shape == (2, 64, 64, 16)
    assert jnp.array_equal(relu.kink_pattern(cache), x > 0)
    report = mbp.check_layer(relu, {}, x, jit=True)
    assert report.ok and report.row("ReLU", "dL/dx").exact, str(report)


@pytest.mark.parametrize("fn, derivative, which", [
    (jnp.sin, lambda x: jnp.cos(x)[..., :1], "derivative"),
    (lambda x: jnp.sin(x).sum(-1), jnp.cos, "fn"),
    (jnp.sin, lambda x: jnp.cos(x).astype(jnp.float16), "derivative"),
], ids=["derivative-broadcast", "fn-reduces", "derivative-float16"])
def test_elementwise_functions_must_keep_x_shape_and_dtype(fn, derivative, which):
    """A derivative of another shape would be broadcast into a plausible wrong gradient: refused, naming the layer."""
    layer = mbp.Elementwise(fn, derivative, label="mine")
    x = jnp.ones((3, 4), jnp.float32)
    with pytest.raises(ValueError, match=rf"mine: {which}\(x\) must return an array of x's shape and dtype "
                                         r"float32\[3,4\] \(one value per entry\), got "):
        _, cache = layer.forward({}, x)
        layer.backward({}, cache, jnp.ones((3, 4), jnp.float32))
