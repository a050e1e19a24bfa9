"""Conv1D: manual vs jax.vjp of lax.conv_general_dilated over one axis (configurations x dtype x jit, random
configurations), finite differences, weight sharing over time, causality, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import eager_in_float32_only, host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp

# (layer, input shape (B, T, C), dtype): kernels 1-5, stride 1-4, every padding form (CAUSAL with dilation),
# dilation 1-3, without bias, both dW formulations (patch k C <= 32 and above), and the degenerate geometries
# where dy is shorter than the kernel (dx by col2im, not the transposed convolution XLA CPU would abort on)
CONFIGS = [
    (mbp.Conv1D(4, 3), (2, 7, 3), jnp.float32),
    (mbp.Conv1D(5, 4, stride=2, padding="VALID", dilation=2), (3, 12, 2), jnp.float64),
    (mbp.Conv1D(2, 3, padding="CAUSAL", dilation=3), (2, 9, 5), jnp.float32),
    (mbp.Conv1D(3, 2, stride=3, padding=(4, 1), use_bias=False), (1, 6, 20), jnp.float64),
    (mbp.Conv1D(3, 5, stride=2, padding="SAME"), (2, 10, 7), jnp.float64),
    (mbp.Conv1D(3, 1, stride=4, padding=2), (2, 5, 2), jnp.float32),
    (mbp.Conv1D(5, 2, stride=2, padding=1, use_bias=False), (4, 1, 5), jnp.float64),  # width 1: To = 1 < k
    (mbp.Conv1D(2, 3, stride=4, padding="SAME"), (2, 3, 2), jnp.float32),  # stride beyond the input
]


def _rand(shape, dtype, seed):
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _case(layer, shape, dtype, seed=0):
    """Params (a nonzero bias too), x and a cotangent dy."""
    params = {"W": _rand((layer.kernel_size, shape[2], layer.features), dtype, seed)}
    if layer.use_bias:
        params["b"] = _rand((layer.features,), dtype, seed + 1)
    return params, _rand(shape, dtype, seed + 2), _rand((shape[0], *layer.output_shape(shape[1:])), dtype, seed + 3)


CHECKS = eager_in_float32_only(CONFIGS, lambda c: c[2])


@pytest.mark.parametrize("config, jit", CHECKS,
                         ids=[f"{repr(c[0])[:60]}-{c[1]}-{jnp.dtype(c[2]).name}-{'jit' if j else 'eager'}" for c, j in CHECKS])
def test_matches_reference(config, jit):
    layer, shape, dtype = config
    params, x, dy = _case(layer, shape, dtype)
    report = mbp.check_layer(layer, params, x, dy, jit=jit)
    assert report.ok, str(report)
    assert report.row("Conv1D", "forward y").shape == dy.shape


@settings(max_examples=4, deadline=None)
@given(
    k=st.integers(1, 5),
    s=st.integers(1, 3),
    d=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID", "CAUSAL", 1, (3, 0)]),
    c=st.integers(1, 6),
    f=st.integers(1, 4),
    n=st.integers(1, 2),
    t=st.integers(13, 16),  # >= the largest span (5 - 1) 3 + 1
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
)
def test_random_configurations(k, s, d, padding, c, f, n, t, dtype):
    layer = mbp.Conv1D(f, k, stride=s, padding=padding, dilation=d)
    params, x, dy = _case(layer, (n, t, c), dtype)
    report = mbp.check_layer(layer, params, x, dy, jit=True)
    assert report.ok, str(report)


def test_against_finite_differences():
    layer, shape, _ = CONFIGS[1]  # stride and dilation
    model = mbp.Sequential(layer, mbp.Flatten())
    params, x, y = _case(layer, shape, jnp.float64)
    # the loss is quadratic along every direction (a linear layer under MSE): no truncation error, so a larger step
    # only shrinks the rounding error O(1e-16 |L| / eps)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), (params, {}), x, y.reshape(shape[0], -1), k=4, eps=1e-3)
    assert report.ok, str(report)


def test_weight_sharing_sums_over_positions():
    # x = 1, dy = 1: every weight meets each of the B To positions, so its gradient is B To
    layer = mbp.Conv1D(2, 3, padding="VALID")
    params = {"W": jnp.ones((3, 2, 2)), "b": jnp.zeros(2)}
    y, cache = layer.forward(params, jnp.ones((4, 7, 2)))
    grads, _ = layer.backward(params, cache, jnp.ones_like(y))
    assert y.shape == (4, 5, 2)
    assert jnp.array_equal(grads["W"], jnp.full((3, 2, 2), 4 * 5.0))
    assert jnp.array_equal(grads["b"], jnp.full((2,), 4 * 5.0))


def test_causal_output_ignores_the_future_and_its_gradient_the_past():
    """CAUSAL: y[o] depends on x[..o] only; so dL/dx[t] gets nothing from outputs before t."""
    layer = mbp.Conv1D(2, 3, padding="CAUSAL", dilation=2)
    params, x, _ = _case(layer, (1, 9, 2), jnp.float64)
    y, _ = layer.forward(params, x)
    y2, _ = layer.forward(params, x.at[:, 5:].set(7.0))
    assert y.shape == (1, 9, 2) and jnp.array_equal(y[:, :5], y2[:, :5]) and not jnp.array_equal(y[:, 5:], y2[:, 5:])
    _, cache = layer.forward(params, x)
    dy = jnp.zeros_like(y).at[:, 4].set(1.0)  # a gradient on output step 4 only
    _, dx = layer.backward(params, cache, dy)
    assert not jnp.any(dx[:, 5:]) and jnp.all(jnp.any(dx[:, jnp.array([0, 2, 4])] != 0, axis=-1))


def test_init_shapes_and_output_sizes():
    params, out_shape = mbp.Conv1D(4, 3, stride=2).init(jax.random.key(0), (9, 5))
    assert out_shape == (5, 4) and params["W"].shape == (3, 5, 4) and jnp.array_equal(params["b"], jnp.zeros(4))
    assert mbp.Conv1D(2, 4, padding="CAUSAL", dilation=2).output_shape((10, 1)) == (10, 2)
    assert mbp.Conv1D(2, 4, stride=3, padding="VALID").output_shape((10, 1)) == (3, 2)


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"features": 0}, r"Conv1D: features must be a positive int, got 0"),
        ({"features": 2, "kernel_size": (3,)}, r"Conv1D: kernel_size must be a positive int, got \(3,\)"),
        ({"features": 2, "stride": 0}, r"Conv1D: stride must be a positive int, got 0"),
        ({"features": 2, "dilation": True}, r"Conv1D: dilation must be a positive int, got True"),
        ({"features": 2, "padding": "FULL"}, r"Conv1D: padding must be 'SAME', 'VALID', 'CAUSAL', .* got 'FULL'"),
        ({"features": 2, "padding": (1, -1)}, r"Conv1D: padding must be .* got \(1, -1\)"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mbp.Conv1D(**kwargs)


def test_bad_input():
    layer = mbp.Conv1D(2, 3)
    params, x, _ = _case(layer, (1, 6, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"Conv1D: expected x of rank 3, got shape \(6, 3\)"):
        layer.forward(params, x[0])
    with pytest.raises(ValueError, match=r"Conv1D: expected parameter W of shape \(3, 4, 2\) \(kernel_size, channels of x, "
                                         r"features\) = \(3, 4, 2\), got \(3, 3, 2\)"):
        layer.forward(params, jnp.ones((1, 6, 4), jnp.float32))
    with pytest.raises(TypeError, match=r"Conv1D: x has dtype float64 but W has float32"):
        layer.forward(params, x.astype(jnp.float64))
    with pytest.raises(ValueError, match=r"Conv1D: expected parameter b of shape \(2,\) \(features,\) = \(2,\), got \(3,\)"):
        layer.forward({**params, "b": jnp.zeros(3, jnp.float32)}, x)
    with pytest.raises(ValueError, match=r"Conv1D: expected params with keys \['W', 'b'\], got \['W'\]"):
        layer.forward({"W": params["W"]}, x)
    with pytest.raises(ValueError, match=r"Conv1D: expected an input shape \(T, C\), got \(6, 6, 3\)"):
        layer.init(jax.random.key(0), (6, 6, 3))
    with pytest.raises(ValueError, match=r"Conv1D: kernel of \(effective\) size \(5,\) is larger than the padded input \(4,\)"):
        mbp.Conv1D(2, 3, padding="VALID", dilation=2).forward(params, x[:, :4])
    y, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match=r"Conv1D: expected dy of shape \(1, 6, 2\) \(the shape of y\), got \(1, 6, 3\)"):
        layer.backward(params, cache, jnp.ones((1, 6, 3), jnp.float32))
