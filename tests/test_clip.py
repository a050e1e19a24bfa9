"""Hand-written global-norm clipping equals optax.clip_by_global_norm, alone and in a twin training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp.training import data
from manualbp.training.clip import clip_by_global_norm, global_norm
from manualbp.training.train import train_twin
from manualbp.verify.verdict import judge


def _tree(dtype):
    k1, k2 = jax.random.split(jax.random.key(0))
    return ({"W": jax.random.normal(k1, (3, 4), dtype), "b": jax.random.normal(k2, (4,), dtype)}, {})


def _assert_trees_close(a, b, dtype):
    for (kp, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True):
        row = judge("clip", jax.tree_util.keystr(kp), x, y, mbp.tolerance(dtype))
        assert row.ok, row


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left alone
def test_equals_optax(dtype, max_norm):
    g = _tree(dtype)
    mine, state = jax.jit(clip_by_global_norm(max_norm).update)(g, clip_by_global_norm(max_norm).init(g))
    theirs, _ = optax.clip_by_global_norm(max_norm).update(g, optax.clip_by_global_norm(max_norm).init(g))
    _assert_trees_close(mine, theirs, dtype)
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(g)
    assert state == ()
    expected = min(max_norm, float(global_norm(g)))
    row = judge("clip", "norm", global_norm(mine), jnp.asarray(expected, dtype), mbp.tolerance(dtype))
    assert row.ok, row


def test_global_norm_is_the_norm_of_all_entries():
    g = _tree(jnp.float64)
    flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(g)])
    row = judge("clip", "global_norm", global_norm(g), np.linalg.norm(flat), mbp.tolerance(jnp.float64))
    assert row.ok, row


def test_bad_max_norm():
    with pytest.raises(ValueError, match=r"clip_by_global_norm: max_norm must be finite and > 0, got 0"):
        clip_by_global_norm(0)
    with pytest.raises(ValueError, match=r"clip_by_global_norm: max_norm must be finite and > 0, got inf"):
        clip_by_global_norm(float("inf"))
    with pytest.raises(TypeError, match=r"clip_by_global_norm: max_norm must be a number, got str 'big'"):
        clip_by_global_norm("big")


def test_twin_run_manual_clip_equals_optax_clip():
    d = data.spirals(n_train=128, n_test=64)
    model = mbp.Sequential(mbp.Dense(16), mbp.Tanh(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(1), (2,), jnp.float64)
    c = 0.05  # below the gradients' norm, so every step clips
    result = train_twin(model, mbp.SoftmaxCrossEntropy(), params, d,
                        optimizer=optax.chain(clip_by_global_norm(c), optax.sgd(0.5)),
                        reference_optimizer=optax.chain(optax.clip_by_global_norm(c), optax.sgd(0.5)),
                        steps=8, batch_size=32, key=jax.random.key(2))
    assert result.divergence.ok, result.divergence.summary()
    # the step length was capped: no parameter moved by more than lr * c per step
    moved = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), result.manual.params, params)
    assert max(float(v) for v in jax.tree_util.tree_leaves(moved)) <= 8 * 0.5 * c
