"""LayerNorm and BatchNorm: manual compact backward vs jax.grad (both dtypes) and finite differences; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp.verify.verdict import judge

HEAD = mbp.SoftmaxCrossEntropy()


def _normal(seed, shape, dtype=jnp.float32):
    """Standard normal test data from numpy (jax.random would compile a sampler for every new shape)."""
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _affine_params(layer, d, dtype, seed=7):
    """Non-trivial gamma and beta, so a swapped or dropped term shows."""
    return {"gamma": 1 + 0.5 * _normal(seed, (d,), dtype), "beta": _normal(seed + 1, (d,), dtype)}


def _model():
    # LayerNorm and BatchNorm in one model; no bias right before a normalization (its gradient is identically 0:
    # the mean is subtracted, so only rounding noise would be compared)
    return mbp.Sequential(
        mbp.Dense(6, use_bias=False), mbp.LayerNorm(epsilon=1e-3), mbp.Tanh(),
        mbp.Dense(6, use_bias=False), mbp.BatchNorm(epsilon=1e-3), mbp.Tanh(),
        mbp.Dense(3),
    )


def _data(shape, dtype, batch=5):
    x = _normal(1, (batch, *shape), dtype)
    y = host(np.random.default_rng(2).integers(0, 3, (batch, *shape[:-1])))
    return x, y


def _init(model, shape, dtype):
    params = list(model.init(jax.random.key(0), shape, dtype)[0])
    for i in (1, 4):
        params[i] = _affine_params(model.layers[i], 6, dtype, seed=10 * i)
    return tuple(params)


# the (B, T, D) case has B = 1: BatchNorm then normalizes over N = B T = 3 entries per channel (defined),
# LayerNorm is per example anyway
@pytest.mark.parametrize(("dtype", "shape", "batch"),
                         [(jnp.float32, (4,), 5), (jnp.float64, (4,), 5), (jnp.float64, (3, 4), 1)],
                         ids=["BD-f32", "BD-f64", "BTD-f64-B1"])
def test_compare_with_reference(dtype, shape, batch):
    model = _model()
    x, y = _data(shape, dtype, batch)
    report = mbp.compare(model, HEAD, _init(model, shape, dtype), x, y)
    assert report.ok, str(report)
    assert {"1 LayerNorm", "4 BatchNorm"} <= {row.layer for row in report.rows}


def test_finite_differences_exhaustive():
    model = _model()
    x, y = _data((4,), jnp.float64)
    report = mbp.gradcheck(model, HEAD, _init(model, (4,), jnp.float64), x, y, mode="exhaustive")
    assert report.ok, str(report)


def test_batchnorm_per_channel_on_images():
    # NHWC: one mean/variance per channel over batch, height and width (N = 2 * 3 * 3)
    x = 3 + 2 * _normal(3, (2, 3, 3, 4), jnp.float64)
    layer = mbp.BatchNorm()
    report = mbp.check_layer(layer, _affine_params(layer, 4, jnp.float64), x, dy=_normal(4, x.shape, jnp.float64))
    assert report.ok, str(report)


# d >= 3: for d = 2, xhat = +-1 + O(eps) and dx = O(eps) is the difference of O(1) terms in ANY evaluation
# (manual or autodiff), so neither is accurate to float64 and comparing them measures rounding noise
@settings(max_examples=3, deadline=None)
@given(batch=st.integers(1, 3), d=st.integers(3, 5), eps=st.sampled_from([1e-5, 1e-2, 1.0]))
def test_layernorm_compact_dx_property(batch, d, eps):
    layer = mbp.LayerNorm(epsilon=eps)
    x = _normal(batch * 10 + d, (batch, d), jnp.float64)
    assert mbp.check_layer(layer, _affine_params(layer, d, jnp.float64), x, dy=_normal(d, x.shape, jnp.float64)).ok


def test_batchnorm_batch_of_one_in_training_mode_raises():
    layer = mbp.BatchNorm()
    params, _ = layer.init(None, (4,))
    with pytest.raises(ValueError, match=r"BatchNorm: training-mode statistics over N = 1 .* undefined"):
        layer.forward(params, jnp.ones((1, 4), jnp.float32))


def test_layernorm_over_one_feature_raises():
    with pytest.raises(ValueError, match=r"LayerNorm: normalizing over a last axis of size 1 is undefined"):
        mbp.LayerNorm().init(None, (1,))
    with pytest.raises(ValueError, match=r"LayerNorm: normalizing over a last axis of size 1 is undefined"):
        mbp.LayerNorm().forward({"gamma": jnp.ones(1), "beta": jnp.zeros(1)}, jnp.ones((3, 1)))


@pytest.mark.parametrize("cls", [mbp.LayerNorm, mbp.BatchNorm])
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), "1e-5", True])
def test_bad_epsilon(cls, eps):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: epsilon must be a positive finite number"):
        cls(epsilon=eps)


@pytest.mark.parametrize("momentum", [1.0, -0.1, 1.5])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match=r"BatchNorm: momentum must lie in \[0, 1\)"):
        mbp.BatchNorm(momentum=momentum)


@pytest.mark.parametrize("cls", [mbp.LayerNorm, mbp.BatchNorm])
def test_wrong_feature_size(cls):
    params, _ = cls().init(None, (4,))
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected x with last axis 4 .* got x of shape \(2, 5\)"):
        cls().forward(params, jnp.ones((2, 5), jnp.float32))


@pytest.mark.parametrize("cls", [mbp.LayerNorm, mbp.BatchNorm])
def test_dtype_mismatch(cls):
    params, _ = cls().init(None, (4,), jnp.float32)
    with pytest.raises(TypeError, match=rf"{cls.__name__}: x has dtype float64 but gamma has float32"):
        cls().forward(params, jnp.ones((2, 4), jnp.float64))
    with pytest.raises(TypeError, match=rf"{cls.__name__}: expected x of a floating dtype, got int32\[2,4\]"):
        cls().forward(params, jnp.ones((2, 4), jnp.int32))


def test_batchnorm_needs_a_batch_axis():
    params, _ = mbp.BatchNorm().init(None, (4,))
    with pytest.raises(ValueError, match=r"BatchNorm: expected x of rank >= 2, got shape \(4,\)"):
        mbp.BatchNorm().forward(params, jnp.ones(4, jnp.float32))


@pytest.mark.parametrize("cls", [mbp.LayerNorm, mbp.BatchNorm])
def test_wrong_params(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected params with keys \['beta', 'gamma'\]"):
        cls().forward({"gamma": jnp.ones(4)}, jnp.ones((2, 4)))


def test_running_statistics_stay_outside_the_gradient():
    layer = mbp.BatchNorm(momentum=0.8)
    params, _ = layer.init(None, (3,), jnp.float64)
    stats = layer.init_stats((3,), jnp.float64)
    xs = [2 + 3 * _normal(i, (6, 3), jnp.float64) for i in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for x in xs:
        _, cache = layer.forward(params, x)
        stats = layer.update_stats(stats, cache)
        xn = np.asarray(x)
        mean, var = 0.8 * mean + 0.2 * xn.mean(0), 0.8 * var + 0.2 * xn.var(0)
        grads, _ = layer.backward(params, cache, jnp.ones_like(x))
        assert set(grads) == {"gamma", "beta"}  # no gradient for the running statistics
    tol = mbp.tolerance(jnp.float64)
    for got, want in ((stats["mean"], mean), (stats["var"], var)):
        assert judge("BatchNorm", "stats", got, want, tol).ok
    # evaluation with the running statistics works on a batch of one
    x1 = xs[0][:1]
    want = (np.asarray(x1) - mean) / np.sqrt(var + layer.epsilon)
    assert judge("BatchNorm", "eval y", layer.forward_eval(params, stats, x1), want, tol).ok


def test_eval_with_the_batch_statistics_reproduces_training_mode():
    layer = mbp.BatchNorm()
    x = _normal(4, (4, 2, 3), jnp.float64)
    params = _affine_params(layer, 3, jnp.float64)
    y, cache = layer.forward(params, x)
    _, _, mu, var = cache
    y_eval = layer.forward_eval(params, {"mean": mu, "var": var}, x)
    assert judge("BatchNorm", "y", y_eval, y, mbp.tolerance(jnp.float64)).ok


def test_forward_eval_bad_stats():
    layer = mbp.BatchNorm()
    params, _ = layer.init(None, (3,))
    with pytest.raises(ValueError, match=r"BatchNorm: expected stats as a dict with keys \['mean', 'var'\]"):
        layer.forward_eval(params, {"mean": jnp.zeros(3)}, jnp.ones((2, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"BatchNorm: expected stats\['var'\] of shape \(3,\), got \(4,\)"):
        layer.forward_eval(params, {"mean": jnp.zeros(3), "var": jnp.ones(4)}, jnp.ones((2, 3), jnp.float32))


def test_running_statistics_of_a_whole_model():
    from manualbp.training.running_stats import forward_eval, init_running_stats, update_running_stats

    bn = mbp.BatchNorm(momentum=0.0)  # momentum 0: the running statistics become the last batch's
    model = mbp.Sequential(mbp.Dense(4, use_bias=False), bn, mbp.ReLU(),
                           mbp.Residual(mbp.Sequential(mbp.Dense(4, use_bias=False), bn)), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (3,), jnp.float64)
    x = _normal(1, (6, 3), jnp.float64)
    stats = init_running_stats(model, params)
    assert set(stats) == {"1", "3/block/1"}
    stats = update_running_stats(model, params, stats, x)
    tol = mbp.tolerance(jnp.float64)
    _, cache = bn.forward(params[1], np.asarray(x) @ np.asarray(params[0]["W"]))
    assert judge("1 BatchNorm", "mean", stats["1"]["mean"], cache[2], tol).ok
    # with the batch's own statistics, evaluation mode reproduces the training-mode output
    assert judge("model", "y", forward_eval(model, params, stats, x), model.forward(params, x)[0],
                                     tol).ok
    assert forward_eval(model, params, stats, x[:1]).shape == (1, 2)  # a batch of one is fine in evaluation


@pytest.mark.parametrize("stats, error, match", [
    ({"mean": jnp.zeros(3, jnp.float32), "var": jnp.array([1.0, -0.5, 1.0], jnp.float32)}, ValueError,
     r"BatchNorm: running statistics must be finite, the variance >= 0, got values in \[-0.5, 1(\.0)?\]"),
    ({"mean": jnp.array([0.0, jnp.nan, 0.0], jnp.float32), "var": jnp.ones(3, jnp.float32)}, ValueError,
     r"BatchNorm: running statistics must be finite"),
    ({"mean": jnp.zeros(3, jnp.float64), "var": jnp.ones(3, jnp.float64)}, TypeError,
     r"BatchNorm: x has dtype float32 but stats\['mean'\] has float64"),
    ({"mean": [0.0, 0.0, 0.0], "var": jnp.ones(3, jnp.float32)}, TypeError, r"BatchNorm: expected stats\['mean'\]"),
])
def test_forward_eval_refuses_running_statistics_that_give_no_plausible_output(stats, error, match):
    """A negative running variance has no square root: an error, never NaN outputs."""
    layer = mbp.BatchNorm()
    params, _ = layer.init(None, (3,), jnp.float32)
    with pytest.raises(error, match=match):
        layer.forward_eval(params, stats, jnp.ones((2, 3), jnp.float32))
