"""MaxPool2D and AvgPool2D: manual vs jax.vjp of lax.reduce_window (configurations x dtype x ties), the first-max
tie rule, no select_and_scatter in the backward, finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp import reference as ref

DTYPES = [jnp.float32, jnp.float64]
POOLS = [mbp.MaxPool2D, mbp.AvgPool2D]

# (window, stride, padding, input shape): non-overlapping (divisible or not), overlapping, stride > window,
# SAME and VALID, non-square, batch 1 and more
CONFIGS = [
    (2, None, "VALID", (2, 8, 8, 3)),
    (2, None, "VALID", (1, 7, 9, 2)),
    (3, None, "SAME", (2, 7, 8, 2)),
    ((3, 2), 1, "VALID", (2, 6, 5, 2)),
    (3, 2, "SAME", (2, 7, 8, 1)),
    ((2, 3), (3, 1), "SAME", (1, 7, 8, 2)),
]


def _x(shape, dtype, seed=1, ties=False):
    rng = np.random.default_rng(seed)
    # ties: small integers, so most windows hold several equal maxima
    x = rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)
    return jnp.asarray(x, dtype)


def _dy(layer, shape, dtype, seed=2):
    return _x((shape[0], *layer.output_shape(shape[1:])), dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize(  # ties decide nothing in an average
    "pool,ties", [(mbp.MaxPool2D, False), (mbp.MaxPool2D, True), (mbp.AvgPool2D, False)], ids=str)
@pytest.mark.parametrize("window,stride,padding,shape", CONFIGS, ids=str)
def test_matches_reference(pool, window, stride, padding, shape, dtype, ties):
    layer = pool(window, stride, padding)
    x = _x(shape, dtype, ties=ties)
    report = mbp.check_layer(layer, {}, x, _dy(layer, shape, dtype), jit=True)
    assert report.ok, str(report)


@settings(max_examples=8, deadline=None)
@given(
    pool=st.sampled_from(POOLS),
    window=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    padding=st.sampled_from(["SAME", "VALID"]),
    c=st.integers(1, 4),
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(4, 9), st.integers(4, 9)),
    ties=st.booleans(),
)
def test_random_configurations(pool, window, stride, padding, c, n, hw, ties):
    layer = pool(window, stride, padding)
    shape = (n, *hw, c)
    report = mbp.check_layer(layer, {}, _x(shape, jnp.float64, ties=ties), _dy(layer, shape, jnp.float64), jit=True)
    assert report.ok, str(report)


def test_ties_go_to_the_first_maximum_like_jax_grad_of_reduce_window():
    # every window all equal: the whole gradient goes to its top-left element; with stride 1 and a 2x2 window the
    # element at (i, j) is the first element of window (i, j) only, so each gets exactly one dy
    x = jnp.ones((1, 3, 4, 1))
    dy = jnp.arange(1.0, 7.0).reshape(1, 2, 3, 1)
    layer = mbp.MaxPool2D(2, stride=1)
    _, dx = layer.backward({}, layer.forward({}, x)[1], dy)
    expected = jnp.zeros((1, 3, 4, 1)).at[:, :2, :3].set(dy)
    assert jnp.array_equal(dx, expected)
    _, pullback = jax.vjp(lambda x: ref.forward(layer, {}, x, ref.NoTaps()), x)
    assert jnp.array_equal(pullback(dy)[0], expected)
    # jax.grad of jnp.max over a reshaped window would split it instead: not the rule we match
    assert not jnp.array_equal(jax.grad(lambda x: jnp.max(x))(jnp.ones(4)), jnp.array([1.0, 0, 0, 0]))


def test_overlapping_winner_receives_the_sum():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(5.0)  # the centre wins all four 2x2 windows
    layer = mbp.MaxPool2D(2, stride=1)
    _, dx = layer.backward({}, layer.forward({}, x)[1], jnp.full((1, 2, 2, 1), 1.5))
    assert jnp.array_equal(dx, jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(6.0))


@pytest.mark.parametrize("window,stride,padding,shape", [CONFIGS[0], CONFIGS[4]], ids=str)
def test_max_pool_backward_never_lowers_to_select_and_scatter(window, stride, padding, shape):
    layer = mbp.MaxPool2D(window, stride, padding)
    x, dy = _x(shape, jnp.float32), _dy(layer, shape, jnp.float32)
    manual = jax.jit(lambda x, dy: layer.backward({}, layer.forward({}, x)[1], dy)).lower(x, dy)
    assert "select_and_scatter" not in manual.as_text()
    assert "select-and-scatter(" not in manual.compile().as_text()  # the HLO op, after XLA's passes
    # ... while jax.grad of the reference does emit it (so the check above can fail)
    autodiff = jax.jit(lambda x, dy: jax.vjp(lambda x: ref.forward(layer, {}, x, ref.NoTaps()), x)[1](dy))
    assert "select_and_scatter" in autodiff.lower(x, dy).as_text()


@pytest.mark.parametrize(
    "window,stride,padding,shape,pad",
    [((2, 3), None, "VALID", (2, 7, 9, 2), 0), (3, 2, "SAME", (2, 7, 7, 1), 1)],  # SAME: 1 on every side here
    ids=str,
)
def test_kink_pattern_is_the_first_winner(window, stride, padding, shape, pad):
    layer = mbp.MaxPool2D(window, stride, padding)
    x = _x(shape, jnp.float64, ties=True)
    winners = layer.kink_pattern(layer.forward({}, x)[1])
    kh, kw = (window, window) if isinstance(window, int) else window
    s = (kh, kw) if stride is None else (stride, stride)
    xp = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    n, ho, wo, c = winners.shape
    for o in range(ho):
        for p in range(wo):
            win = xp[:, o * s[0]: o * s[0] + kh, p * s[1]: p * s[1] + kw].reshape(n, kh * kw, c)
            assert np.array_equal(winners[:, o, p], np.argmax(win, axis=1))  # numpy's argmax: the first maximum


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.__name__)
def test_against_finite_differences(pool):
    model = mbp.Sequential(mbp.Conv2D(3, 2, padding="VALID"), pool(3, 2, "SAME"), mbp.Flatten(), mbp.Dense(4))
    params, _ = model.init(jax.random.key(0), (7, 6, 2), jnp.float64)
    x, y = _x((2, 7, 6, 2), jnp.float64), _x((2, 4), jnp.float64, seed=3)
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), params, x, y, k=4)
    assert report.ok, str(report)


def test_avg_pool_same_counts_the_padding():
    # 3x3 windows, SAME on 3x3 ones: the corner window holds 4 real elements of 9, so it averages to 4/9
    y, _ = mbp.AvgPool2D(3, 1, "SAME").forward({}, jnp.ones((1, 3, 3, 1)))
    assert jnp.allclose(y[0, :, :, 0], jnp.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]) / 9)


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.__name__)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"window": 0}, r"window must be a positive int or a pair of positive ints, got 0"),
        ({"window": (2, -1)}, r"window must be .* got \(2, -1\)"),
        ({"window": 2, "stride": 0}, r"stride must be .* got 0"),
        ({"window": 2, "padding": "FULL"}, r"padding must be 'SAME' or 'VALID', got 'FULL'"),
        ({"window": 2, "padding": 1}, r"padding must be 'SAME' or 'VALID', got 1"),
    ],
)
def test_bad_hyperparameters(pool, kwargs, match):
    with pytest.raises(ValueError, match=pool.__name__ + ": " + match):
        pool(**kwargs)


@pytest.mark.parametrize("pool", POOLS, ids=lambda p: p.__name__)
def test_bad_input(pool):
    layer = pool(3)
    with pytest.raises(ValueError, match=pool.__name__ + r": expected x of rank 4, got shape \(6, 6, 3\)"):
        layer.forward({}, jnp.ones((6, 6, 3)))
    with pytest.raises(ValueError, match=pool.__name__ + r": window of \(effective\) size \(3, 3\) is larger than "
                                         r"the padded input \(2, 5\)"):
        layer.forward({}, jnp.ones((1, 2, 5, 1)))
    with pytest.raises(ValueError, match=pool.__name__ + r": window .* larger than the padded input \(6, 2\)"):
        layer.init(jax.random.key(0), (6, 2, 1))
    with pytest.raises(TypeError, match=pool.__name__ + r": expected x of a floating dtype, got int32"):
        layer.forward({}, jnp.ones((1, 6, 6, 1), jnp.int32))
