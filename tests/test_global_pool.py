"""GlobalAvgPool2D and GlobalMaxPool2D: manual vs jax.vjp of the reference (shapes x dtype x jit x ties), the first-max
tie rule, finite differences in a small CNN, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import RUN_IDS, RUNS, host

import manualbp as mbp
from manualbp import reference as ref

POOLS = [mbp.GlobalAvgPool2D(), mbp.GlobalMaxPool2D()]
SHAPES = [(2, 3, 4, 5), (1, 1, 1, 3), (3, 5, 2, 1)]  # a 1x1 image: the pool is the identity


def _x(shape, dtype, seed=1, ties=False):
    rng = np.random.default_rng(seed)
    return host(rng.integers(0, 3, shape) if ties else rng.standard_normal(shape), dtype)


@pytest.mark.parametrize("dtype, jit", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layer,ties", [(POOLS[0], False), (POOLS[1], False), (POOLS[1], True)], ids=str)
def test_matches_reference(layer, ties, shape, dtype, jit):
    x = _x(shape, dtype, ties=ties)
    report = mbp.check_layer(layer, {}, x, _x((shape[0], shape[3]), dtype, seed=2), jit=jit)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == (shape[0], shape[3])


def test_ties_send_the_whole_gradient_to_the_first_maximum():
    """Channel 0 holds 2 three times: only the first in row-major order (h, then w) gets dy; jnp.max would split it."""
    x = jnp.zeros((1, 2, 3, 2)).at[0, 0, 2, 0].set(2.0).at[0, 1, 0, 0].set(2.0).at[0, 1, 2, 0].set(2.0)
    x = x.at[0, 1, 1, 1].set(-1.0)  # channel 1: five tied zeros, the first at (0, 0)
    dy = jnp.array([[3.0, 5.0]])
    layer = mbp.GlobalMaxPool2D()
    y, cache = layer.forward({}, x)
    _, dx = layer.backward({}, cache, dy)
    expected = jnp.zeros_like(x).at[0, 0, 2, 0].set(3.0).at[0, 0, 0, 1].set(5.0)
    assert jnp.array_equal(y, jnp.array([[2.0, 0.0]])) and jnp.array_equal(dx, expected)
    _, pullback = jax.vjp(lambda x: ref.forward(layer, {}, x, ref.NoTaps()), x)
    assert jnp.array_equal(pullback(dy)[0], expected)  # jax.grad of reduce_window max: the same rule
    _, split = jax.vjp(lambda x: jnp.max(x, axis=(1, 2)), x)
    assert float(split(dy)[0][0, 0, 2, 0]) == 1.0  # jnp.max: 3 shared among the three ties
    assert jnp.array_equal(layer.kink_pattern(cache), jnp.array([[2, 0]]))  # row-major pixel index h W + w


def test_nan_propagates_and_takes_the_gradient():
    x = jnp.ones((1, 2, 2, 1)).at[0, 1, 0, 0].set(jnp.nan)
    y, cache = mbp.GlobalMaxPool2D().forward({}, x)
    _, dx = mbp.GlobalMaxPool2D().backward({}, cache, jnp.ones((1, 1)))
    assert jnp.isnan(y[0, 0]) and jnp.array_equal(dx[0, :, :, 0], jnp.array([[0.0, 0.0], [1.0, 0.0]]))


def test_against_finite_differences():
    """A small CNN ending in a global pool; a max winner flipped by +/-eps is reported as a crossed kink, not a failure."""
    model = mbp.Sequential(mbp.Conv2D(3, 2, padding="VALID"), mbp.Tanh(), mbp.Parallel(*POOLS), mbp.Add(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (4, 5, 2), jnp.float64)
    x = _x((3, 4, 5, 2), jnp.float64)
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 1]), k=4)
    assert report.ok, str(report)


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", POOLS, ids=str)
def test_bad_input(layer):
    name = layer.name
    with pytest.raises(ValueError, match=rf"{name}: expected x of rank 4, got shape \(3, 4, 5\)"):
        layer.forward({}, jnp.ones((3, 4, 5)))
    with pytest.raises(TypeError, match=rf"{name}: expected x of a floating dtype, got int32\[1,2,2,1\]"):
        layer.forward({}, jnp.ones((1, 2, 2, 1), jnp.int32))
    with pytest.raises(ValueError, match=rf"{name}: takes no parameters \(expected params {{}}\), got \['W'\]"):
        layer.forward({"W": jnp.ones(1)}, jnp.ones((1, 2, 2, 1)))
    with pytest.raises(ValueError, match=rf"{name}: expected an image of at least one pixel, got input shape \(0, 3, 2\)"):
        layer.forward({}, jnp.ones((1, 0, 3, 2)))
    with pytest.raises(ValueError, match=rf"{name}: expected an input shape \(H, W, C\), got \(4, 2\)"):
        layer.init(jax.random.key(0), (4, 2))
    _, cache = layer.forward({}, jnp.ones((2, 3, 3, 4)))
    with pytest.raises(ValueError, match=rf"{name}: expected dy of shape \(2, 4\) \(the shape of y\), got \(2, 1, 1, 4\)"):
        layer.backward({}, cache, jnp.ones((2, 1, 1, 4)))
