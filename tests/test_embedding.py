"""Embedding: lookup and scatter-add backward vs jax.grad of one-hot @ E, repeated ids, and bad ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp import reference as ref


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name)
def test_matches_reference(dtype):
    layer = mbp.Embedding(7, 3)
    ids = jnp.array([[1, 2, 2, 6], [0, 1, 1, 1]])
    params, out_shape = layer.init(jax.random.key(0), ids.shape[1:], dtype)
    assert out_shape == (4, 3)
    report = mbp.check_layer(layer, params, ids, jit=True)
    assert report.ok, str(report)
    assert [r.quantity for r in report.rows] == ["forward y", "dE"]  # no row for the ids: they get no gradient


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=6, max_size=6))  # one length: one compile for all examples
def test_scatter_add_sums_repeated_ids(ids):
    """dE[v] = sum of dy over the positions holding id v (and 0 for ids never used)."""
    layer = mbp.Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (6,), jnp.float64)
    _, cache = layer.forward(params, jnp.array([ids]))
    dy = np.arange(12.0).reshape(1, 6, 2)
    grads, dx = layer.backward(params, cache, jnp.asarray(dy))
    assert dx is None
    expected = np.zeros((5, 2))
    for n, v in enumerate(ids):
        expected[v] += dy[0, n]
    assert np.array_equal(np.asarray(grads["E"]), expected)


def test_in_a_model_with_time_distributed_dense_and_masked_head():
    model = mbp.Sequential(mbp.Embedding(9, 4), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    ids = jax.random.randint(jax.random.key(1), (2, 5), 0, 9)
    y = jax.random.randint(jax.random.key(2), (2, 5), 0, 3)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, ids, y, mask)
    assert report.ok, str(report)
    # the mean is over the 8 real (batch, time) positions: all-ones mask == no mask
    head = mbp.SoftmaxCrossEntropy()
    logits = jax.random.normal(jax.random.key(3), (2, 5, 3), jnp.float64)
    assert jnp.allclose(head.forward(logits, y, jnp.ones((2, 5)))[0], head.forward(logits, y)[0], rtol=1e-15)


def test_float_ids_are_an_error():
    layer = mbp.Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (3,))
    with pytest.raises(TypeError, match=r"Embedding: expected integer ids, got float32\[1,3\]"):
        layer.forward(params, jnp.ones((1, 3), jnp.float32))


@pytest.mark.parametrize("bad", [5, -1])
def test_ids_out_of_vocabulary_are_an_error(bad):
    layer = mbp.Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (3,))
    ids = jnp.array([[0, bad, 1]])
    with pytest.raises(ValueError, match=r"Embedding: ids must lie in \[0, 5\) \(E has shape \(5, 2\)\), got values"):
        layer.forward(params, ids)


def test_out_of_range_ids_under_jit_read_nan_and_get_no_gradient_like_the_reference():
    """Traced ids cannot be checked: an id outside [0, V) reads a NaN row (no plausible output) and adds nothing to dE."""
    layer = mbp.Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (3,), jnp.float64)
    ids = jnp.array([[0, 7, -1]])
    dy = jnp.arange(6.0).reshape(1, 3, 2)

    def manual(p, x):
        y, cache = layer.forward(p, x)
        return y, layer.backward(p, cache, dy)[0]["E"]

    y, dE = jax.jit(manual)(params, ids)
    y_r, dparams_r, _ = jax.jit(lambda p, x, dy: ref.vjp_layer(lambda p, x: ref.forward(layer, p, x, ref.NoTaps()),
                                                              p, x, dy))(params, ids, dy)
    assert np.array_equal(np.isnan(y), [[[False, False], [True, True], [True, True]]])
    assert np.array_equal(np.isnan(y_r), np.isnan(y))
    assert np.array_equal(y[0, 0], params["E"][0])
    expected = np.zeros((5, 2))
    expected[0] = dy[0, 0]
    assert np.array_equal(dE, expected) and np.array_equal(dparams_r["E"], expected)


def test_other_bad_input():
    layer = mbp.Embedding(5, 2)
    params, _ = layer.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"Embedding: expected ids of rank >= 1 \(batch first\), got shape \(\)"):
        layer.forward(params, jnp.array(1))
    with pytest.raises(ValueError, match=r"Embedding: vocab must be a positive int, got 0"):
        mbp.Embedding(0, 2)
    with pytest.raises(ValueError, match=r"Embedding: features must be a positive int, got 2.0"):
        mbp.Embedding(5, 2.0)
    _, cache = layer.forward(params, jnp.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"Embedding: expected dy of shape \(1, 3, 2\) \(the shape of y\), got"):
        layer.backward(params, cache, jnp.ones((1, 3, 3), jnp.float32))


@pytest.mark.parametrize("dtype, vocab", [(jnp.uint8, 257), (jnp.uint8, 258), (jnp.int8, 300), (jnp.uint16, 65536),
                                          (jnp.uint16, 65537), (jnp.uint16, 65538), (jnp.int16, 40000),
                                          (jnp.uint32, 70000), (jnp.int64, 9)],
                         ids=lambda v: jnp.dtype(v).name if not isinstance(v, int) else str(v))
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_any_integer_dtype_of_ids_gives_the_int32_result(dtype, vocab, jit):
    """An index or comparison in the ids' own dtype would wrap (uint8 against vocab 257): manual and reference widen first."""
    layer = mbp.Embedding(vocab, 2)
    rng = np.random.default_rng(0)  # the data made on the host: nothing compiled per vocab and dtype but the layer
    params = {"E": host(rng.standard_normal((vocab, 2)), jnp.float64)}
    top = min(int(jnp.iinfo(dtype).max), vocab - 1)
    ids32 = host([[0, 1, top, 7], [top, top - 1, 3, 0]], jnp.int32)
    ids = host(ids32, dtype)
    dy = host(rng.standard_normal((2, 4, 2)), jnp.float64)

    def run(x):
        y, cache = layer.forward(params, x)
        return y, layer.backward(params, cache, dy)[0]["E"]

    run = jax.jit(run) if jit else run
    (y, dE), (y32, dE32) = run(ids), run(ids32)
    assert np.array_equal(y, y32) and np.array_equal(y, params["E"][np.asarray(ids32)])
    assert np.array_equal(dE, dE32)
    y_r, dparams_r, _ = jax.jit(lambda p, x, dy: ref.vjp_layer(lambda p, x: ref.forward(layer, p, x, ref.NoTaps()),
                                                              p, x, dy))(params, ids, dy)
    assert np.array_equal(y_r, y32) and np.allclose(dparams_r["E"], dE32, rtol=1e-15, atol=0)
