"""Conv2D: manual vs jax.vjp of lax.conv_general_dilated (configurations x dtype), vs finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp.models import get

DTYPES = [jnp.float32, jnp.float64]

# (layer, input shape (N, H, W, C)): kernels 1x1 to 5x5, non-square, stride 1-3, every padding form, dilation 1-2,
# channels 1-8, batch 1 and more, both dW formulations (im2col for kh kw C <= 32, convolution above)
CONFIGS = [
    (mbp.Conv2D(4, 3), (2, 7, 6, 3)),
    (mbp.Conv2D(4, (3, 2), stride=2, padding="VALID"), (3, 9, 8, 1)),
    (mbp.Conv2D(5, (5, 3), stride=(3, 2), padding=((3, 0), (1, 4)), dilation=(2, 1)), (2, 11, 10, 2)),
    (mbp.Conv2D(8, 2, stride=3, padding=4), (1, 5, 6, 8)),
    (mbp.Conv2D(2, 1, use_bias=False), (2, 4, 5, 7)),
    (mbp.Conv2D(3, 3, stride=2, padding="SAME", dilation=2), (2, 8, 9, 6)),
    (mbp.Conv2D(6, (4, 5), stride=(1, 3), padding="SAME"), (1, 6, 11, 4)),
]


def _x(shape, dtype, seed=1):
    # numpy draws: jax.random would compile a sampler for every new shape (seconds each on 2 cores)
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _case(layer, shape, dtype, seed=0):
    """Params (a nonzero bias too), x and a cotangent dy for ``layer`` on inputs of ``shape``."""
    kh, kw = (layer.kernel_size,) * 2 if isinstance(layer.kernel_size, int) else layer.kernel_size
    params = {"W": _x((kh, kw, shape[3], layer.features), dtype, seed) / float(np.sqrt(kh * kw * shape[3]))}
    if layer.use_bias:
        params["b"] = _x((layer.features,), dtype, seed + 1)
    out_shape = layer.output_shape(shape[1:])
    return params, _x(shape, dtype, seed + 2), _x((shape[0], *out_shape), dtype, seed + 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("layer,shape", CONFIGS, ids=lambda c: repr(c)[:60])
def test_matches_reference(layer, shape, dtype):
    params, x, dy = _case(layer, shape, dtype)
    report = mbp.check_layer(layer, params, x, dy, jit=True)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == dy.shape


def test_init_shapes_and_scale():
    params, out_shape = mbp.Conv2D(4, 3, stride=2).init(jax.random.key(0), (8, 7, 1))
    assert out_shape == (4, 4, 4)
    assert params["W"].shape == (3, 3, 1, 4) and params["W"].dtype == jnp.float32
    assert 0.1 < float(jnp.std(params["W"])) < 0.6  # LeCun normal: std 1/sqrt(3 3 1) = 0.33
    assert jnp.array_equal(params["b"], jnp.zeros(4))


@settings(max_examples=5, deadline=None)
@given(
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from(["SAME", "VALID", 1, ((2, 0), (0, 1))]),
    c=st.integers(1, 8),
    f=st.integers(1, 8),
    n=st.integers(1, 3),
    hw=st.tuples(st.integers(9, 11), st.integers(9, 11)),  # >= the largest span (5 - 1) 2 + 1
)
def test_random_configurations(k, s, d, padding, c, f, n, hw):
    layer = mbp.Conv2D(f, k, stride=s, padding=padding, dilation=d)
    params, x, dy = _case(layer, (n, *hw, c), jnp.float64)
    report = mbp.check_layer(layer, params, x, dy, jit=True)
    assert report.ok, str(report)


def test_against_finite_differences():
    layer, shape = CONFIGS[2]  # stride, dilation, asymmetric explicit padding (SAME: the built-in CNN below)
    model = mbp.Sequential(layer, mbp.Flatten())
    params, x, y = _case(layer, shape, jnp.float64)
    # the loss is quadratic along every direction (a linear layer under MSE), so the central difference has no
    # truncation error and a larger step only shrinks the rounding error O(1e-16 |L| / eps)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), (params, {}), x, y.reshape(shape[0], -1), k=4, eps=1e-3)
    assert report.ok, str(report)


def test_weight_sharing_sums_over_positions():
    # x = 1, dy = 1: every weight is used at each of the N Ho Wo positions, so its gradient is N Ho Wo
    layer = mbp.Conv2D(2, (2, 3), padding="VALID")
    x = jnp.ones((3, 5, 6, 2))
    params = {"W": jnp.ones((2, 3, 2, 2)), "b": jnp.zeros(2)}
    y, cache = layer.forward(params, x)
    grads, _ = layer.backward(params, cache, jnp.ones_like(y))
    assert y.shape == (3, 4, 4, 2)
    assert jnp.array_equal(grads["W"], jnp.full((2, 3, 2, 2), 3 * 4 * 4.0))
    assert jnp.array_equal(grads["b"], jnp.full((2,), 3 * 4 * 4.0))


def test_builtin_cnn_exhaustive_finite_differences():
    b = get("cnn")
    params, _ = b.model.init(jax.random.key(0), b.input_shape, jnp.float64)
    x, y, mask = b.make_batch(jax.random.key(1), 3, jnp.float64)
    report = mbp.gradcheck(b.model, b.head, params, x, y, mask, mode="exhaustive")
    assert report.ok, str(report)


def _init(layer, shape=(6, 6, 3)):
    return _case(layer, (1, *shape), jnp.float32)[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"features": 0}, r"Conv2D: features must be a positive int, got 0"),
        ({"features": 2, "kernel_size": 0}, r"Conv2D: kernel_size must be a positive int or a pair .* got 0"),
        ({"features": 2, "kernel_size": (3, 3, 3)}, r"Conv2D: kernel_size .* got \(3, 3, 3\)"),
        ({"features": 2, "stride": 0}, r"Conv2D: stride must be .* got 0"),
        ({"features": 2, "stride": (1, -2)}, r"Conv2D: stride must be .* got \(1, -2\)"),
        ({"features": 2, "dilation": -1}, r"Conv2D: dilation must be .* got -1"),
        ({"features": 2, "padding": "FULL"}, r"Conv2D: padding must be 'SAME', 'VALID', an int >= 0 .* got 'FULL'"),
        ({"features": 2, "padding": -1}, r"Conv2D: padding must be .* got -1"),
        ({"features": 2, "padding": (1, 2)}, r"Conv2D: padding must be .* got \(1, 2\)"),
        ({"features": 2, "padding": ((1, 2), (3,))}, r"Conv2D: padding must be .* got \(\(1, 2\), \(3,\)\)"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mbp.Conv2D(**kwargs)


def test_kernel_larger_than_padded_input():
    layer = mbp.Conv2D(2, (5, 3), padding="VALID")
    with pytest.raises(ValueError, match=r"Conv2D: kernel of \(effective\) size \(5, 3\) is larger than the padded "
                                         r"input \(4, 6\) \(input \(4, 6\)"):
        layer.init(jax.random.key(0), (4, 6, 1))
    params = _init(layer, (6, 6, 1))
    with pytest.raises(ValueError, match=r"Conv2D: kernel .* \(5, 3\) is larger than the padded input \(4, 8\)"):
        layer.forward(params, jnp.ones((2, 4, 8, 1), jnp.float32))
    dilated = mbp.Conv2D(2, 3, padding=1, dilation=4)  # spans (3 - 1) 4 + 1 = 9 > 5 + 2
    with pytest.raises(ValueError, match=r"Conv2D: kernel of \(effective\) size \(9, 9\) is larger than the padded "
                                         r"input \(7, 7\)"):
        dilated.init(jax.random.key(0), (5, 5, 1))


def test_bad_input():
    layer = mbp.Conv2D(2, 3)
    params = _init(layer)
    with pytest.raises(ValueError, match=r"Conv2D: expected x of rank 4, got shape \(6, 6, 3\)"):
        layer.forward(params, jnp.ones((6, 6, 3)))
    with pytest.raises(ValueError, match=r"Conv2D: expected x with 3 channels \(W has shape \(3, 3, 3, 2\), HWIO\), "
                                         r"got x of shape \(1, 6, 6, 4\)"):
        layer.forward(params, jnp.ones((1, 6, 6, 4)))
    with pytest.raises(TypeError, match=r"Conv2D: expected x of a floating dtype, got int32\[1,6,6,3\]"):
        layer.forward(params, jnp.ones((1, 6, 6, 3), jnp.int32))
    with pytest.raises(TypeError, match=r"Conv2D: x has dtype float64 but W has float32"):
        layer.forward(params, jnp.ones((1, 6, 6, 3), jnp.float64))
    with pytest.raises(ValueError, match=r"Conv2D: expected params with keys \['W', 'b'\], got \['W'\]"):
        layer.forward({"W": params["W"]}, jnp.ones((1, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"Conv2D: expected an input shape \(H, W, C\), got \(6, 3\)"):
        layer.init(jax.random.key(0), (6, 3))
