"""ConvTranspose2D: manual vs jax.vjp of lax.conv_transpose (configurations x dtype x jit, random configurations),
its two identities with Conv2D, finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import eager_in_float32_only, host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp.verify.verdict import judge

# (layer, input shape (N, H, W, C), dtype): stride 1-3 (non-square), kernels 1-5, SAME / VALID / int / explicit
# padding (top > k - 1: dx crops dy), transpose_kernel both ways, without bias
CONFIGS = [
    (mbp.ConvTranspose2D(4, 3), (2, 5, 4, 3), jnp.float32),
    (mbp.ConvTranspose2D(5, 4, stride=2, padding="SAME"), (2, 4, 5, 2), jnp.float64),
    (mbp.ConvTranspose2D(3, (3, 2), stride=(2, 3), padding="VALID"), (1, 3, 4, 4), jnp.float32),
    (mbp.ConvTranspose2D(3, (2, 4), stride=(3, 1), padding="SAME", transpose_kernel=True), (2, 3, 3, 2), jnp.float64),
    (mbp.ConvTranspose2D(2, 3, stride=2, padding=((4, 0), (1, 3)), use_bias=False), (2, 4, 3, 3), jnp.float32),
    (mbp.ConvTranspose2D(2, 5, stride=3, padding=2, transpose_kernel=True), (1, 3, 2, 5), jnp.float64),
    (mbp.ConvTranspose2D(2, 1, stride=2, padding="VALID"), (1, 3, 2, 5), jnp.float32),
    # found by test_random_configurations: top padding 3 > k - 1 makes dW's convolution pad dy by (-2, 1),
    # which XLA CPU mis-sums (dW's first tap row off by 50%); negative pads are now crops
    (mbp.ConvTranspose2D(2, (2, 1), padding=((3, 0), (0, 2))), (2, 2, 2, 1), jnp.float32),
]


def _rand(shape, dtype, seed):
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _case(layer, shape, dtype, seed=0):
    """Params (a nonzero bias too), x and a cotangent dy."""
    kh, kw = (layer.kernel_size,) * 2 if isinstance(layer.kernel_size, int) else layer.kernel_size
    C, F = shape[3], layer.features
    params = {"W": _rand((kh, kw, F, C) if layer.transpose_kernel else (kh, kw, C, F), dtype, seed)}
    if layer.use_bias:
        params["b"] = _rand((F,), dtype, seed + 1)
    return params, _rand(shape, dtype, seed + 2), _rand((shape[0], *layer.output_shape(shape[1:])), dtype, seed + 3)


CHECKS = eager_in_float32_only(CONFIGS, lambda c: c[2])


@pytest.mark.parametrize("config, jit", CHECKS,
                         ids=[f"{repr(c[0])[16:76]}-{c[1]}-{jnp.dtype(c[2]).name}-{'jit' if j else 'eager'}" for c, j in CHECKS])
def test_matches_reference(config, jit):
    layer, shape, dtype = config
    params, x, dy = _case(layer, shape, dtype)
    report = mbp.check_layer(layer, params, x, dy, jit=jit)
    assert report.ok, str(report)
    assert report.row("ConvTranspose2D", "forward y").shape == dy.shape


@settings(max_examples=4, deadline=None)
@given(
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.sampled_from(["SAME", "VALID", 1, ((3, 0), (0, 2))]),
    transpose_kernel=st.booleans(),
    c=st.integers(1, 5),
    f=st.integers(1, 5),
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(2, 4), st.integers(2, 4)),
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
)
def test_random_configurations(k, s, padding, transpose_kernel, c, f, n, hw, dtype):
    layer = mbp.ConvTranspose2D(f, k, stride=s, padding=padding, transpose_kernel=transpose_kernel)
    params, x, dy = _case(layer, (n, *hw, c), dtype)
    report = mbp.check_layer(layer, params, x, dy, jit=True)
    assert report.ok, str(report)


def test_output_sizes_follow_lax_conv_transpose():
    assert mbp.ConvTranspose2D(1, 4, stride=2, padding="SAME").output_shape((5, 3, 1)) == (10, 6, 1)  # in s
    assert mbp.ConvTranspose2D(1, 4, stride=2, padding="VALID").output_shape((5, 3, 1)) == (12, 8, 1)  # in s + k - s
    assert mbp.ConvTranspose2D(1, 2, stride=3, padding="VALID").output_shape((5, 3, 1)) == (15, 9, 1)  # k < s: gaps
    assert mbp.ConvTranspose2D(1, 3, stride=2, padding=((1, 0), (0, 0))).output_shape((4, 4, 1)) == (6, 5, 1)


@pytest.mark.parametrize("k,s", [(3, 2), (4, 2), (3, 1)])
def test_its_forward_is_the_input_gradient_of_conv2d(k, s):
    """ConvTranspose2D(transpose_kernel=True, VALID) of g == Conv2D(VALID, stride s).backward's dx for cotangent g."""
    H = 2 * s + k  # (H - k) divisible by s: every input row is reached, so the shapes line up
    W = _rand((k, k, 3, 2), jnp.float64, 0)  # Conv2D 3 -> 2 channels; the transposed layer maps 2 -> 3
    x = _rand((2, H, H, 3), jnp.float64, 1)
    conv = mbp.Conv2D(2, k, stride=s, padding="VALID", use_bias=False)
    y, cache = conv.forward({"W": W}, x)
    g = _rand(y.shape, jnp.float64, 2)
    _, dx = conv.backward({"W": W}, cache, g)
    up = mbp.ConvTranspose2D(3, k, stride=s, padding="VALID", use_bias=False, transpose_kernel=True)
    z, _ = up.forward({"W": W}, g)
    assert judge("ConvTranspose2D", "forward vs Conv2D dx", z, dx, mbp.tolerance(jnp.float64)).ok


@pytest.mark.parametrize("k,s", [(3, 2), (2, 2)])
def test_its_input_gradient_is_a_convolution(k, s):
    """The adjoint the other way: ConvTranspose2D(transpose_kernel=True, VALID).backward's dx == Conv2D(VALID, s) of dy."""
    up = mbp.ConvTranspose2D(3, k, stride=s, padding="VALID", use_bias=False, transpose_kernel=True)
    W = _rand((k, k, 3, 2), jnp.float64, 0)
    x = _rand((2, 3, 4, 2), jnp.float64, 1)
    z, cache = up.forward({"W": W}, x)
    dz = _rand(z.shape, jnp.float64, 2)
    _, dx = up.backward({"W": W}, cache, dz)
    conv_of_dz, _ = mbp.Conv2D(2, k, stride=s, padding="VALID", use_bias=False).forward({"W": W}, dz)
    assert judge("ConvTranspose2D", "dx vs Conv2D(dy)", dx, conv_of_dz, mbp.tolerance(jnp.float64)).ok


def test_against_finite_differences():
    layer, shape, _ = CONFIGS[4]  # stride 2, explicit padding that crops dy in dx
    model = mbp.Sequential(mbp.ConvTranspose2D(3, 2, stride=2, padding="SAME", transpose_kernel=True), mbp.Tanh(),
                           layer, mbp.Flatten())
    p0, mid = model.layers[0].init(jax.random.key(0), (2, 2, 2), jnp.float64)
    params, _, _ = _case(layer, (1, *mid), jnp.float64)
    x = _rand((2, 2, 2, 2), jnp.float64, 5)
    y = _rand((2, int(np.prod(layer.output_shape(mid)))), jnp.float64, 6)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), (p0, {}, params, {}), x, y, k=4)
    assert report.ok, str(report)


def test_every_weight_is_used_at_every_input_pixel():
    # x = 1, dy = 1, k <= s (copies do not overlap, none cut off by VALID): each weight painted N H W times
    layer = mbp.ConvTranspose2D(2, 2, stride=3, padding="VALID")
    params = {"W": jnp.ones((2, 2, 1, 2)), "b": jnp.zeros(2)}
    y, cache = layer.forward(params, jnp.ones((3, 4, 5, 1)))
    grads, dx = layer.backward(params, cache, jnp.ones_like(y))
    assert y.shape == (3, 12, 15, 2) and float(jnp.sum(y)) == 3 * 4 * 5 * 4 * 2
    assert jnp.array_equal(grads["W"], jnp.full((2, 2, 1, 2), 3 * 4 * 5.0))
    assert jnp.array_equal(grads["b"], jnp.full((2,), 3 * 12 * 15.0)) and jnp.array_equal(dx, jnp.full((3, 4, 5, 1), 8.0))


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"features": 0}, r"ConvTranspose2D: features must be a positive int, got 0"),
        ({"features": 2, "kernel_size": (3, 0)}, r"ConvTranspose2D: kernel_size must be .* got \(3, 0\)"),
        ({"features": 2, "stride": 0}, r"ConvTranspose2D: stride must be .* got 0"),
        ({"features": 2, "padding": "FULL"}, r"ConvTranspose2D: padding must be 'SAME', 'VALID', an int >= 0 .* got 'FULL'"),
        ({"features": 2, "transpose_kernel": "yes"}, r"ConvTranspose2D: transpose_kernel must be a bool, got 'yes'"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mbp.ConvTranspose2D(**kwargs)


def test_bad_input():
    layer = mbp.ConvTranspose2D(2, 3, stride=2)
    params, x, _ = _case(layer, (1, 3, 3, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected x of rank 4, got shape \(3, 3, 4\)"):
        layer.forward(params, x[0])
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected parameter W of shape \(3, 3, 5, 2\) \(kh, kw, "
                                         r"channels of x, features\) = \(3, 3, 5, 2\), got \(3, 3, 4, 2\)"):
        layer.forward(params, jnp.ones((1, 3, 3, 5), jnp.float32))
    flipped = mbp.ConvTranspose2D(2, 3, stride=2, transpose_kernel=True)
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected parameter W of shape \(3, 3, 2, 4\) \(kh, kw, "
                                         r"features, channels of x\)"):
        flipped.forward(params, x)
    with pytest.raises(TypeError, match=r"ConvTranspose2D: x has dtype float64 but W has float32"):
        layer.forward(params, x.astype(jnp.float64))
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected params with keys \['W', 'b'\], got \['W'\]"):
        layer.forward({"W": params["W"]}, x)
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected an input shape \(H, W, C\), got \(3, 4\)"):
        layer.init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"ConvTranspose2D: kernel \(5, 5\) is larger than the stride-dilated, padded "
                                         r"input \(input \(3, 3\), stride \(1, 1\), padding \(\(0, 0\), \(0, 0\)\)\): "
                                         r"output size \(-1, -1\)"):
        mbp.ConvTranspose2D(2, 5, stride=1, padding=0).init(jax.random.key(0), (3, 3, 1))
    y, cache = layer.forward(params, x)
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected dy of shape \(1, 6, 6, 2\) \(the shape of y\), "
                                         r"got \(1, 6, 6, 3\)"):
        layer.backward(params, cache, jnp.ones((1, 6, 6, 3), jnp.float32))
