"""Checkpoints: round trip, atomic writes, refusal of truncated/foreign/other-model files, exact resume."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp.training import checkpoint as ckpt
from manualbp.training import data
from manualbp.training.train import train, train_twin


def _state():
    params = ({"W": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}, {})
    return {"params": params, "opt": optax.adam(1e-3).init(params), "step": np.int64(7)}


def _assert_equal_trees(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {"model": "m", "step": 7})
    tree, meta = ckpt.load(path, _state(), expect={"model": "m"})
    _assert_equal_trees(tree, _state())
    assert meta["step"] == 7 and ckpt.read_meta(path)["model"] == "m"


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {"model": "m"})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"params": ()}, {"model": "other"})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]  # the temporary file is gone
    monkeypatch.undo()
    _assert_equal_trees(ckpt.load(path, _state())[0], _state())


def test_truncated_file(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load(path, _state())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ckpt.load(tmp_path / "nothing.npz", _state())


def test_foreign_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.load(junk, _state())
    plain = tmp_path / "plain.npz"
    np.savez(plain, W=np.ones(3))
    with pytest.raises(ckpt.CheckpointError, match="not a manualbp checkpoint"):
        ckpt.load(plain, _state())


def test_other_model_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {"model": "Sequential(Dense(3))"})
    with pytest.raises(ckpt.CheckpointError, match="written for model 'Sequential\\(Dense\\(3\\)\\)'"):
        ckpt.load(path, _state(), expect={"model": "Sequential(Dense(4))"})
    other = _state()
    other["params"] = ({"W": jnp.zeros((2, 4)), "b": jnp.zeros(4)}, {})
    other["opt"] = optax.adam(1e-3).init(other["params"])
    with pytest.raises(ckpt.CheckpointError, match=r"is float\w+\[2, 3\], expected float\w+\[2, 4\]"):
        ckpt.load(path, other)
    with pytest.raises(ckpt.CheckpointError, match="tree structure does not match"):
        ckpt.load(path, {"params": other["params"]})


def _setup():
    d = data.spirals(n_train=96, n_test=32)
    model = mbp.Sequential(mbp.Dense(8), mbp.Tanh(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float32)
    kw = dict(optimizer=optax.sgd(0.1, momentum=0.9), batch_size=32, key=jax.random.key(1))
    return model, mbp.SoftmaxCrossEntropy(), params, d, kw


def test_resume_equals_uninterrupted(tmp_path):
    model, head, params, d, kw = _setup()
    whole = train(model, head, params, d, steps=10, **kw)
    path = tmp_path / "run" / "c.npz"
    train(model, head, params, d, steps=4, checkpoint=path, **kw)  # "stopped" after 4 steps (mid-epoch)
    resumed = train(model, head, params, d, steps=10, checkpoint=path, resume=True, **kw)
    assert resumed.resumed_from == 4
    _assert_equal_trees(resumed.params, whole.params)
    _assert_equal_trees(resumed.opt_state, whole.opt_state)
    _assert_equal_trees(resumed.history, whole.history)


def test_twin_resume_equals_uninterrupted(tmp_path):
    model, head, params, d, kw = _setup()
    whole = train_twin(model, head, params, d, steps=6, **kw)
    path = tmp_path / "c.npz"
    train_twin(model, head, params, d, steps=3, checkpoint=path, **kw)
    resumed = train_twin(model, head, params, d, steps=6, checkpoint=path, resume=True, **kw)
    _assert_equal_trees(resumed.reference.params, whole.reference.params)
    _assert_equal_trees(resumed.divergence.max_abs, whole.divergence.max_abs)


def test_resume_from_another_models_checkpoint(tmp_path):
    model, head, params, d, kw = _setup()
    path = tmp_path / "c.npz"
    train(model, head, params, d, steps=2, checkpoint=path, **kw)
    wider = mbp.Sequential(mbp.Dense(16), mbp.Tanh(), mbp.Dense(2))
    wider_params, _ = wider.init(jax.random.key(0), (2,), jnp.float32)
    with pytest.raises(ckpt.CheckpointError, match="written for model"):
        train(wider, head, wider_params, d, steps=4, checkpoint=path, resume=True, **kw)
