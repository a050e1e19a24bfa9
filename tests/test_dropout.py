"""Dropout (dropout.py): the same units dropped as the reference, its key, evaluation mode, finite differences,
a training step's traced key, bad input."""

import jax
import jax.numpy as jnp
import pytest
from arrays import normal

import manualbp as mbp
from manualbp import reference as ref
from manualbp.layers.dropout import keep_mask


@pytest.mark.parametrize(("dtype", "jit"), [(jnp.float32, True), (jnp.float64, False)])
def test_dropout_drops_the_same_units_as_the_reference(dtype, jit):
    layer = mbp.Dropout(0.3, key=jax.random.key(7))
    x = normal(2, (4, 6, 8), dtype)
    report = mbp.check_layer(layer, {}, x, jit=jit)
    assert report.ok, str(report)
    y, _ = layer.forward({}, x)
    dropped = y == 0
    assert 0.2 < float(jnp.mean(dropped)) < 0.4
    assert jnp.allclose(y[~dropped], x[~dropped] / 0.7, rtol=1e-6)
    # the backward routes dy through the same units, scaled by 1 / (1 - rate)
    _, dx = layer.backward({}, layer.forward({}, x)[1], jnp.ones_like(x))
    assert jnp.array_equal(dx == 0, dropped)


def test_dropout_mask_is_the_same_in_float32_and_float64():
    key = jax.random.key(3)
    y32, _ = mbp.Dropout(0.5, key=key).forward({}, jnp.ones((50,), jnp.float32))
    y64, _ = mbp.Dropout(0.5, key=key).forward({}, jnp.ones((50,), jnp.float64))
    assert jnp.array_equal(y32 == 0, y64 == 0)


def test_dropout_evaluation_is_the_identity_and_rate_zero_needs_no_key():
    x = normal(3, (3, 4))
    for layer in (mbp.Dropout(0.5, training=False), mbp.Dropout(0.0)):
        y, cache = layer.forward({}, x)
        assert y is x and layer.backward({}, cache, x)[1] is x


def test_with_dropout_key_gives_every_dropout_its_own_mask():
    model = mbp.Sequential(mbp.Dropout(0.5), mbp.Residual(mbp.Sequential(mbp.Dense(8), mbp.Dropout(0.5))))
    bound = mbp.with_dropout_key(model, jax.random.key(0))
    first, second = bound.layers[0], bound.layers[1].block.layers[1]
    ones = jnp.ones((4, 8))
    assert not jnp.array_equal(first.forward({}, ones)[0], second.forward({}, ones)[0])
    assert bound == mbp.with_dropout_key(model, jax.random.key(0)) and hash(bound) == hash(
        mbp.with_dropout_key(model, jax.random.key(0)))
    assert bound != mbp.with_dropout_key(model, jax.random.key(1))
    evaluation = mbp.without_dropout(bound)
    assert not evaluation.layers[0].training and evaluation.layers[0].key is None


def test_dropout_model_finite_differences():
    model = mbp.with_dropout_key(
        mbp.Sequential(mbp.Dense(8), mbp.Dropout(0.25), mbp.Tanh(), mbp.Dense(3)), jax.random.key(5))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    x, y = normal(4, (6, 5)), jnp.arange(6) % 3
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y, k=4)
    assert report.ok, str(report)


def test_a_training_step_binds_a_traced_key_on_both_paths():
    """Inside jit the key is a tracer: no recompilation per step, and manual and jax.grad drop the same units."""
    model = mbp.Sequential(mbp.Dense(16), mbp.Dropout(0.5), mbp.Dense(3))
    head = mbp.SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x, y = normal(5, (8, 4)), jnp.arange(8) % 3

    traces = []

    @jax.jit
    def both(params, key):
        traces.append(key)  # runs once per trace, not per call
        bound = mbp.with_dropout_key(model, key)
        manual = mbp.value_and_grad(bound, head, jit=False, check=False)(params, x, y)
        return manual, ref.value_and_grad(bound, head, jit=False)(params, x, y)

    for step in range(2):
        (lm, gm), (lr, gr) = both(params, jax.random.fold_in(jax.random.key(9), step))
        assert jnp.allclose(lm, lr, rtol=1e-14)
        for a, b in zip(jax.tree_util.tree_leaves(gm), jax.tree_util.tree_leaves(gr)):
            assert jnp.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert len(traces) == 1
    with pytest.raises(TypeError, match=r"Dropout: a layer bound to a traced key cannot be hashed"):
        jax.jit(lambda k: hash(mbp.Dropout(0.5, key=k)))(jax.random.key(0))


def test_dropout_bad_input():
    for rate in (1.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"Dropout: rate must lie in \[0, 1\)"):
            mbp.Dropout(rate)
    with pytest.raises(ValueError, match=r"Dropout: training mode \(rate 0.5\) needs a PRNG key: bind one with "
                                         r"mbp.with_dropout_key\(model, key\)"):
        mbp.Dropout(0.5).forward({}, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"Dropout: expected a PRNG key \(jax.random.key\(seed\)\), got int 3; for a "
                                        r"seed use jax.random.key\(3\)"):
        mbp.Dropout(0.5, key=3)
    with pytest.raises(TypeError, match=r"Dropout: expected a PRNG key .*got float32\[2\]"):
        mbp.Dropout(0.5, key=jnp.ones(2, jnp.float32))
    # the legacy raw uint32 key is accepted and gives the same mask as the typed key
    raw = mbp.Dropout(0.5, key=jax.random.key_data(jax.random.key(1)))
    assert raw == mbp.Dropout(0.5, key=jax.random.key(1))
    assert jnp.array_equal(keep_mask(raw.key, 0.5, (9,)), keep_mask(jax.random.key(1), 0.5, (9,)))


def test_a_dropout_subclass_is_another_layer_both_ways_round():
    """Equal layers share a compiled step: a subclass (another backward) must never compare equal to Dropout."""

    class Mine(mbp.Dropout):
        pass

    key = jax.random.key(3)
    a, b = mbp.Dropout(0.5, key=key), Mine(0.5, key=key)
    assert a != b and b != a
    assert a == mbp.Dropout(0.5, key=key) and hash(a) == hash(mbp.Dropout(0.5, key=key))
    assert b == Mine(0.5, key=key)
