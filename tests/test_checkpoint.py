"""Checkpoints: the file format's refusals, the run directory's rules, exact resume, linear saving, Ctrl-C."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp.training import checkpoint as ckpt
from manualbp.training import data
from manualbp.training.checkpoint import CheckpointError
from manualbp.training.loop import TrainingInterrupted
from manualbp.training.run_dir import HISTORY_FILE, STATE_FILE, RunDir
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


def test_save_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ckpt, "fsync_dir", lambda d: calls.append((d, sorted(os.listdir(d)))))
    ckpt.save(tmp_path / "c.npz", _state(), {})
    assert calls == [(str(tmp_path), ["c.npz"])]  # after the rename: the new name is what gets flushed


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load(path, _state())
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load(junk, _state())
    plain = tmp_path / "plain.npz"
    np.savez(plain, W=np.ones(3))
    with pytest.raises(CheckpointError, match="not a manualbp checkpoint"):
        ckpt.load(plain, _state())
    with pytest.raises(FileNotFoundError, match="no such file"):
        ckpt.load(tmp_path / "nothing.npz", _state())


def test_not_a_regular_file_or_not_a_plain_zip(tmp_path):
    directory = tmp_path / "dir.npz"
    directory.mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        ckpt.load(directory, _state())
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is a FIFO"):  # never opened: a FIFO would block the reader
        ckpt.load(fifo, _state())
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones(3))
    with pytest.raises(CheckpointError, match="not a zip"):
        ckpt.load(npy, _state())
    good = tmp_path / "c.npz"
    ckpt.save(good, _state(), {})
    central = good.read_bytes().find(b"PK\x01\x02")  # the first central directory entry: flags at +8, method at +10
    for patch, message in (({8: 0x1}, "is encrypted"), ({10: 99}, "compression method 99")):
        raw = bytearray(good.read_bytes())
        for at, value in patch.items():
            raw[central + at] |= value
        bad = tmp_path / "bad.npz"
        bad.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=message):
            ckpt.load(bad, _state())


def test_shapes_are_checked_before_the_data_is_read(tmp_path):
    path = tmp_path / "c.npz"
    ckpt.save(path, _state(), {"model": "Sequential(Dense(3))"})
    with pytest.raises(CheckpointError, match="written for model 'Sequential\\(Dense\\(3\\)\\)'"):
        ckpt.load(path, _state(), expect={"model": "Sequential(Dense(4))"})
    other = _state()
    other["params"] = ({"W": jnp.zeros((2, 4)), "b": jnp.zeros(4)}, {})
    other["opt"] = optax.adam(1e-3).init(other["params"])
    with pytest.raises(CheckpointError, match=r"is float\w+\[2, 3\], expected float\w+\[2, 4\]"):
        ckpt.load(path, other)
    with pytest.raises(CheckpointError, match="tree structure does not match"):
        ckpt.load(path, {"params": other["params"]})


def test_history_log_bounds(tmp_path):
    layout = [["loss", [], "float32"], ["twin/grad", [2], "float32"]]
    hist = {"loss": np.arange(3, dtype=np.float32), "twin/grad": np.ones((3, 2), np.float32)}
    log = tmp_path / "h.log"
    ckpt.create_log(log, "run1", layout, hist)
    ckpt.append_log(log, "run1", layout, 3, {"loss": np.float32([7]), "twin/grad": np.zeros((1, 2), np.float32)})
    back = ckpt.read_log(log, "run1", layout, 4)
    assert back["loss"].tolist() == [0, 1, 2, 7] and back["twin/grad"].shape == (4, 2)
    with pytest.raises(CheckpointError, match="holds 4 steps, the state is at step 5"):
        ckpt.read_log(log, "run1", layout, 5)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        ckpt.read_log(log, "run2", layout, 4)
    # a crash after appending but before the state file moved on: the next append cuts back to the state's step
    ckpt.append_log(log, "run1", layout, 2, {"loss": np.float32([9]), "twin/grad": np.zeros((1, 2), np.float32)})
    assert ckpt.read_log(log, "run1", layout, 3)["loss"].tolist() == [0, 1, 9]


def _setup():
    d = data.spirals(n_train=96, n_test=32)
    model = mbp.Sequential(mbp.Dense(8), mbp.Tanh(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float32)
    return model, mbp.SoftmaxCrossEntropy(), params, d


_OPT = optax.sgd(0.1, momentum=0.9)  # one object: every test reuses the compiled step
_KW = dict(optimizer=_OPT, batch_size=32, key=jax.random.key(1))


def test_resume_equals_uninterrupted_and_saving_appends(tmp_path):
    model, head, params, d = _setup()
    whole = train(model, head, params, d, steps=10, **_KW)
    run = tmp_path / "run"
    train(model, head, params, d, steps=4, checkpoint=run, checkpoint_every=2, **_KW)  # stopped mid-epoch
    assert sorted(os.listdir(run)) == [STATE_FILE, HISTORY_FILE]
    size4 = (run / HISTORY_FILE).stat().st_size
    resumed = train(model, head, params, d, steps=10, checkpoint=run, resume=True, checkpoint_every=3, **_KW)
    assert resumed.resumed_from == 4
    _assert_equal_trees(resumed.params, whole.params)
    _assert_equal_trees(resumed.opt_state, whole.opt_state)
    _assert_equal_trees(resumed.history, whole.history)
    # the log grew by the 6 new steps' records only: a save costs the steps since the last one
    header = ckpt._LOG_HEADER
    assert ((run / HISTORY_FILE).stat().st_size - header) * 4 == (size4 - header) * 10
    assert ckpt.read_meta(run / STATE_FILE)["step"] == 10


def test_twin_resume_equals_uninterrupted(tmp_path):
    model, head, params, d = _setup()
    whole = train_twin(model, head, params, d, steps=6, **_KW)
    train_twin(model, head, params, d, steps=3, checkpoint=tmp_path, **_KW)
    resumed = train_twin(model, head, params, d, steps=6, checkpoint=tmp_path, resume=True, **_KW)
    _assert_equal_trees(resumed.reference.params, whole.reference.params)
    np.testing.assert_array_equal(resumed.divergence.grad, whole.divergence.grad)


def test_run_directory_rules(tmp_path):
    model, head, params, d = _setup()
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="does not exist; nothing to resume"):
        train(model, head, params, d, steps=2, checkpoint=run, resume=True, **_KW)
    run.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train(model, head, params, d, steps=2, checkpoint=run, resume=True, **_KW)
    train(model, head, params, d, steps=2, checkpoint=run, settings={"lr": 0.1, "seed": 0}, **_KW)
    with pytest.raises(CheckpointError, match="already holds a checkpoint at step 2; resume it"):
        train(model, head, params, d, steps=4, checkpoint=run, **_KW)
    with pytest.raises(CheckpointError, match=r"written with lr 0.1 \(this run: 0.2\)"):
        train(model, head, params, d, steps=4, checkpoint=run, resume=True, settings={"lr": 0.2, "seed": 0}, **_KW)
    with pytest.raises(CheckpointError, match="optimizer state .* another optimizer or clipping"):
        train(model, head, params, d, steps=4, checkpoint=run, resume=True, settings={"lr": 0.1, "seed": 0},
              **{**_KW, "optimizer": optax.adam(0.1)})
    with pytest.raises(CheckpointError, match="another key"):
        train(model, head, params, d, steps=4, checkpoint=run, resume=True, settings={"lr": 0.1, "seed": 0},
              **{**_KW, "key": jax.random.key(2)})
    with pytest.raises(CheckpointError, match="is at step 2, beyond the 1 steps asked for"):
        train(model, head, params, d, steps=1, checkpoint=run, resume=True, settings={"lr": 0.1, "seed": 0}, **_KW)
    wider = mbp.Sequential(mbp.Dense(16), mbp.Tanh(), mbp.Dense(2))
    with pytest.raises(CheckpointError, match="written for model"):
        train(wider, head, wider.init(jax.random.key(0), (2,))[0], d, steps=4, checkpoint=run, resume=True,
              settings={"lr": 0.1, "seed": 0}, **_KW)
    (run / ".tmp-crashed").write_bytes(b"half a save")
    r = train(model, head, params, d, steps=3, checkpoint=run, overwrite=True, **_KW)
    assert r.resumed_from == 0 and ".tmp-crashed" not in os.listdir(run)  # stale temporary files are removed
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a directory"):
        RunDir(afile)
    with pytest.raises(CheckpointError, match="cannot write there"):
        RunDir(afile / "sub")


def test_ctrl_c_saves_a_last_checkpoint_and_resumes(tmp_path):
    model, head, params, d = _setup()
    whole = train(model, head, params, d, steps=8, **_KW)

    def press_ctrl_c(step, values):
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # what a terminal sends; the loop finishes the step, saves, raises

    with pytest.raises(TrainingInterrupted) as e:
        train(model, head, params, d, steps=8, checkpoint=tmp_path, log_every=1, on_log=press_ctrl_c, **_KW)
    assert isinstance(e.value, KeyboardInterrupt) and (e.value.step, e.value.saved) == (3, True)
    assert ckpt.read_meta(tmp_path / STATE_FILE)["step"] == 3
    resumed = train(model, head, params, d, steps=8, checkpoint=tmp_path, resume=True, **_KW)
    _assert_equal_trees(resumed.params, whole.params)


def _flips(n, size, seed):
    """n distinct (offset, bit) pairs of a file of ``size`` bytes, seeded."""
    rng = np.random.default_rng(seed)
    return [(int(o), 1 << int(b)) for o, b in zip(rng.choice(size, n, replace=False), rng.integers(0, 8, n))]


def test_sixty_flipped_bits_in_the_history_log_are_sixty_refusals(tmp_path):
    """Every byte of the log is covered by a checksum: a flip anywhere is refused, naming the file and the record."""
    layout = [["loss", [], "float32"], ["twin/grad", [2], "float32"]]
    hist = {"loss": np.arange(5, dtype=np.float32), "twin/grad": np.ones((5, 2), np.float32)}
    log = tmp_path / HISTORY_FILE
    ckpt.create_log(log, "run1", layout, hist)
    clean = log.read_bytes()
    refused = {}
    for offset, bit in _flips(60, len(clean), seed=0):
        raw = bytearray(clean)
        raw[offset] ^= bit
        log.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=rf"checkpoint {log}: ") as e:
            ckpt.read_log(log, "run1", layout, 5)
        refused[offset] = str(e.value)
    assert len(refused) == 60
    record = ckpt.record_size(layout) + ckpt._DIGEST
    for offset, message in refused.items():  # a flipped record names its step
        if offset >= ckpt._LOG_HEADER:
            assert f"the history record of step {(offset - ckpt._LOG_HEADER) // record + 1} does not match" in message
    log.write_bytes(clean)
    assert ckpt.read_log(log, "run1", layout, 5)["loss"].tolist() == [0, 1, 2, 3, 4]


def test_sixty_flipped_bits_in_the_state_file_are_sixty_refusals(tmp_path):
    path = tmp_path / STATE_FILE
    ckpt.save(path, _state(), {"model": "m", "step": 7})
    clean = path.read_bytes()
    for offset, bit in _flips(60, len(clean), seed=1):
        raw = bytearray(clean)
        raw[offset] ^= bit
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=rf"checkpoint {path}: "):
            ckpt.load(path, _state(), expect={"model": "m"})
    path.write_bytes(clean)
    _assert_equal_trees(ckpt.load(path, _state())[0], _state())


def test_a_resume_from_a_damaged_run_directory_is_refused_or_bit_identical(tmp_path):
    """One flipped bit in either file of a real run: the resume is refused; the undamaged files resume exactly."""
    model, head, params, d = _setup()
    whole = train(model, head, params, d, steps=6, **_KW)
    run = tmp_path / "run"
    train(model, head, params, d, steps=3, checkpoint=run, **_KW)
    files = {name: (run / name).read_bytes() for name in (STATE_FILE, HISTORY_FILE)}
    for name, offset, what in ((HISTORY_FILE, -3, "the history record of step 3 does not match its checksum"),
                               (STATE_FILE, len(files[STATE_FILE]) // 2, "checkpoint")):
        raw = bytearray(files[name])
        raw[offset] ^= 0x01
        (run / name).write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=what):
            train(model, head, params, d, steps=6, checkpoint=run, resume=True, **_KW)
        (run / name).write_bytes(files[name])
    resumed = train(model, head, params, d, steps=6, checkpoint=run, resume=True, **_KW)
    _assert_equal_trees(resumed.history, whole.history)
    _assert_equal_trees(resumed.params, whole.params)
