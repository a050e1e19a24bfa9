"""BatchNorm inside a model at evaluation time: every container's forward_eval, running statistics kept by train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp import reference as ref
from manualbp.training import data
from manualbp.training.running_stats import forward_eval, init_running_stats
from manualbp.training.train import train, train_twin
from manualbp.verify.verdict import judge

TOL = mbp.tolerance(jnp.float64)


def _model():
    bn = mbp.BatchNorm(momentum=0.5)
    block = mbp.Sequential(mbp.Dense(6, use_bias=False), mbp.BatchNorm(momentum=0.5), mbp.Tanh())
    return mbp.Sequential(mbp.Dense(6, use_bias=False), bn, mbp.ReLU(), mbp.Residual(block),
                          mbp.Parallel(mbp.Sequential(mbp.Dense(6, use_bias=False), mbp.BatchNorm()), mbp.Identity()),
                          mbp.Add(), mbp.Dense(2))


def _params_and_stats(model, scale=1.0):
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    stats = init_running_stats(model, params)
    keys = jax.random.split(jax.random.key(5), 2 * len(stats))
    stats = {path: {"mean": scale * jax.random.normal(k1, s["mean"].shape, jnp.float64),
                    "var": 0.5 + jax.random.uniform(k2, s["var"].shape, jnp.float64)}
             for (path, s), k1, k2 in zip(sorted(stats.items()), keys[::2], keys[1::2])}
    return params, stats


def test_every_container_has_an_evaluation_forward_matching_the_reference():
    model = _model()
    params, stats = _params_and_stats(model)
    assert sorted(stats) == ["1", "3/block/1", "4/0/1"]
    x = jax.random.normal(jax.random.key(1), (5, 2), jnp.float64)
    got = model.forward_eval(params, stats, x)
    want = ref.forward_eval(model, params, stats, x)
    assert judge("model", "eval y", got, want, TOL).ok
    one = model.forward_eval(params, stats, x[:1])  # evaluation needs no batch: one example is fine
    assert judge("model", "eval y[0]", one, got[:1], TOL).ok
    # with the batch's own statistics as running statistics, evaluation reproduces training mode
    _, cache = model.forward(params, x)
    batch = model.update_stats({p: {"mean": 0 * s["mean"], "var": 0 * s["var"]} for p, s in stats.items()}, cache)
    momentum = {"1": 0.5, "3/block/1": 0.5, "4/0/1": 0.9}  # from zero: s = (1 - momentum) s_batch
    exact = {p: {k: v / (1 - momentum[p]) for k, v in s.items()} for p, s in batch.items()}
    assert judge("model", "y", model.forward_eval(params, exact, x), model.forward(params, x)[0], TOL).ok


def test_update_stats_from_the_training_cache_equals_the_reference():
    model = _model()
    params, stats = _params_and_stats(model)
    x = jax.random.normal(jax.random.key(2), (7, 2), jnp.float64)
    _, cache = model.forward(params, x)
    mine = model.update_stats(stats, cache)
    _, theirs = ref.dispatch.forward_train(model, params, stats, x)
    assert sorted(mine) == sorted(theirs) == sorted(stats)
    for path in stats:
        for k in ("mean", "var"):
            assert judge(path, k, mine[path][k], theirs[path][k], TOL).ok


def test_train_keeps_running_statistics_and_tests_with_them():
    d = data.spirals(n_train=128, n_test=64, dtype=np.float64)
    model = mbp.Sequential(mbp.Dense(16, use_bias=False), mbp.BatchNorm(), mbp.ReLU(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    opt = optax.adam(1e-2)
    result = train(model, mbp.SoftmaxCrossEntropy(), params, d, optimizer=opt, steps=12, batch_size=32,
                   key=jax.random.key(1))
    stats = result.stats["1"]
    assert not np.allclose(stats["mean"], 0)  # moved from their initial zeros by the training batches
    x1 = d.x_test[:1]
    y1 = model.forward_eval(result.params, result.stats, x1)  # a prediction on one example after mbp.train
    assert y1.shape == (1, 2)
    with pytest.raises(ValueError, match="training-mode statistics over N = 1"):
        model.forward(result.params, x1)  # what used to be the only way, and raised
    logits = forward_eval(model, result.params, result.stats, d.x_test)
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == d.y_test))
    assert result.test["accuracy"] == pytest.approx(accuracy)
    # the twin run: both paths keep their own statistics, and they agree
    twin = train_twin(model, mbp.SoftmaxCrossEntropy(), params, d, optimizer=opt, steps=12, batch_size=32,
                      key=jax.random.key(1))
    assert twin.divergence.ok, twin.divergence.summary()
    for k in ("mean", "var"):
        assert judge("1", k, twin.manual.stats["1"][k], twin.reference.stats["1"][k], TOL).ok
        assert judge("1", k, twin.manual.stats["1"][k], stats[k], TOL).ok
