"""The training loop, twin mode, the training models and the ``manualbp train`` command."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp.cli import train as cli_train
from manualbp.training import data, zoo
from manualbp.training.train import Divergence, make_step, train, train_twin
from manualbp.verify.report import compare_arrays


@pytest.fixture(scope="module")
def spirals():
    return data.spirals(n_train=256, n_test=128)


def _mlp(dtype=jnp.float32):
    model = mbp.Sequential(mbp.Dense(16), mbp.Tanh(), mbp.Dense(2))
    return model, mbp.SoftmaxCrossEntropy(), model.init(jax.random.key(0), (2,), dtype)[0]


def test_train_learns_and_records_history(spirals):
    model, head, params = _mlp()
    result = train(model, head, params, spirals, optimizer=optax.adam(1e-2), steps=60, batch_size=32,
                   key=jax.random.key(1))
    assert result.history["loss"].shape == (60,) and result.history["accuracy"].shape == (60,)
    assert result.history["loss"][-10:].mean() < result.history["loss"][:10].mean()
    assert 0.0 <= result.test["accuracy"] <= 1.0
    assert jax.tree_util.tree_structure(result.params) == jax.tree_util.tree_structure(params)


def test_reference_path_and_logging(spirals):
    model, head, params = _mlp()
    logged = []
    result = train(model, head, params, spirals, steps=6, batch_size=32, grad="reference", key=jax.random.key(1),
                   log_every=2, on_log=lambda step, values: logged.append((step, sorted(values))))
    assert [s for s, _ in logged] == [2, 4, 6]
    assert logged[0][1] == ["reference/accuracy", "reference/loss"]
    assert result.history["loss"].shape == (6,)


def test_step_compiles_once(spirals):
    model, head, params = _mlp()
    opt = optax.sgd(0.1)
    step = make_step(model, head, {"manual": opt}, "classification")
    state = {"manual": (params, opt.init(params))}
    for i in range(4):
        x, y = spirals.x_train[i * 32:(i + 1) * 32], spirals.y_train[i * 32:(i + 1) * 32]
        state, _ = step(state, x, y)
    assert step._cache_size() == 1
    assert make_step(model, head, {"manual": opt}, "classification") is step


def _small_cnn():
    return mbp.Sequential(mbp.Conv2D(4, 3), mbp.ReLU(), mbp.MaxPool2D(2), mbp.Flatten(), mbp.Dense(10))


# the built-in tasks' models run 1000 float64 steps in the benchmark; here: 50 steps of a conv/pool net on
# digits images and of the built-in LSTM on a short adding problem (the MLP is covered by the clip and CLI twins)
@pytest.mark.parametrize("name", ["cnn", "lstm"])
def test_float64_twin_stays_within_tolerance(name):
    if name == "cnn":
        model, head, d = _small_cnn(), mbp.SoftmaxCrossEntropy(), data.digits("image", np.float64)
    else:
        task = zoo.task("lstm", "adding")
        model, head, d = task.model, task.head, data.adding(T=10, n_train=256, n_test=64, dtype=np.float64)
    params = jax.jit(lambda k: model.init(k, d.input_shape, jnp.float64)[0])(jax.random.key(0))  # one compile
    result = train_twin(model, head, params, d, optimizer=optax.sgd(0.05), steps=50, batch_size=16,
                        key=jax.random.key(1))
    dv = result.divergence
    assert dv.ok, dv.summary()
    assert dv.max_rel.shape == (50, len(jax.tree_util.tree_leaves(params)))
    row = compare_arrays("twin", "loss per step", result.manual.history["loss"], result.reference.history["loss"],
                         mbp.tolerance(jnp.float64))
    assert row.ok, row


def test_twin_names_first_divergent_step_and_parameter(spirals):
    model, head, params = _mlp(jnp.float32)
    result = train_twin(model, head, params, spirals, optimizer=optax.sgd(0.1), reference_optimizer=optax.sgd(0.2),
                        steps=3, batch_size=32, key=jax.random.key(1))
    dv = result.divergence
    assert dv.dtype == "float32" and dv.names == ["0/W", "0/b", "2/W", "2/b"] and np.all(np.isfinite(dv.max_rel))
    assert not result.divergence.ok
    step, name, _, _ = result.divergence.first_exceed
    assert step == 1 and name == "0/W"
    assert "first exceeded at step 1, parameter 0/W" in result.divergence.summary()
    assert result.divergence.to_dict()["first_exceed"]["parameter"] == "0/W"


def test_divergence_summary_of_a_clean_run():
    tol = mbp.tolerance(jnp.float64)
    zeros = np.zeros((5, 2))
    dv = Divergence(["0/W", "0/b"], zeros, zeros, zeros, "float64", tol)
    assert dv.ok and dv.summary().startswith("twin PASS")
    nan = zeros.copy()
    nan[3, 1] = np.nan
    assert Divergence(["0/W", "0/b"], zeros, nan, zeros, "float64", tol).first_exceed[:2] == (4, "0/b")


def test_bad_input(spirals):
    model, head, params = _mlp()
    kw = dict(key=jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size 257 is larger than the data \\(256 training examples\\)"):
        train(model, head, params, spirals, steps=1, batch_size=257, **kw)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        train(model, head, params, spirals, steps=0, batch_size=8, **kw)
    with pytest.raises(ValueError, match="grad must be one of"):
        train(model, head, params, spirals, steps=1, batch_size=8, grad="autodiff", **kw)
    with pytest.raises(TypeError, match="data must be a manualbp.training.data.Dataset"):
        train(model, head, params, (spirals.x_train, spirals.y_train), steps=1, batch_size=8, **kw)


def test_labels_that_do_not_match_the_head():
    digits = data.digits("flat")
    model = mbp.Sequential(mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (64,), jnp.float32)
    with pytest.raises(ValueError, match=r"labels in \[0, 9\] but Sequential outputs 2 classes"):
        train(model, mbp.SoftmaxCrossEntropy(), params, digits, steps=1, batch_size=8, key=jax.random.key(0))
    adding = data.adding(T=4, n_train=32, n_test=8)
    flat = mbp.Sequential(mbp.Flatten(), mbp.Dense(3))
    params, _ = flat.init(jax.random.key(0), (4, 2), jnp.float32)
    with pytest.raises(TypeError, match="SoftmaxCrossEntropy: float labels must be targets of logits' shape"):
        train(flat, mbp.SoftmaxCrossEntropy(), params, adding, steps=1, batch_size=8, key=jax.random.key(0))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'transformer'"):
        zoo.task("transformer", "digits")
    with pytest.raises(ValueError, match="unknown data 'mnist'"):
        zoo.task("mlp", "mnist")
    with pytest.raises(ValueError, match="model 'cnn' does not fit data 'adding'"):
        zoo.task("cnn", "adding")
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        zoo.optimizer("rmsprop", 0.1)


def test_every_task_fits_its_data():
    outputs = {"digits": (10,), "spirals": (2,), "adding": (1,), "sort": (11, 11)}
    inputs = {"mlp": (64,), "cnn": (8, 8, 1), "rnn": (8, 8), "lstm": (8, 8), "gpt": (8, 8)}
    for (model_name, data_name), make in zoo.TASKS.items():
        shape = {"digits": inputs[model_name], "spirals": (2,), "adding": (50, 2), "sort": (11,)}[data_name]
        dtype = jnp.int32 if data_name == "sort" else jnp.float32  # sort: token ids
        model = make().model
        # traced, not run: init and forward of every task model on one example
        def forward(k, model=model, shape=shape, dtype=dtype):
            return model.forward(model.init(k, shape)[0], jnp.zeros((1, *shape), dtype))[0]

        out = jax.eval_shape(forward, jax.random.key(0))
        assert out.shape[1:] == outputs[data_name], (model_name, data_name)


def _parse(argv):
    parser = argparse.ArgumentParser(prog="manualbp")
    cli_train.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_twin_json(capsys):
    args = _parse(["train", "--model", "mlp", "--data", "spirals", "--grad", "twin", "--steps", "5",
                   "--batch-size", "32", "--dtype", "float64", "--clip", "1.0", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["divergence"]["ok"] and summary["steps"] == 5 and summary["clip"] == 1.0
    assert set(summary["test"]) == {"manual", "reference"}


def test_plot_writes_a_png(tmp_path):
    png = tmp_path / "curves.png"
    steps = np.arange(1, 6, dtype=float)
    history = {"manual": {"loss": 1 / steps}, "reference": {"loss": 1 / steps}}
    dv = Divergence(["0/W"], np.zeros((5, 1)), 1e-15 * steps[:, None], 1e-16 * steps[:, None], "float64",
                    mbp.tolerance(jnp.float64))
    cli_train.plot(str(png), history, dv, "mlp on spirals")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_test_accuracy_and_resumes(tmp_path, capsys):
    argv = ["train", "--model", "mlp", "--data", "spirals", "--steps", "6", "--batch-size", "64",
            "--checkpoint", str(tmp_path)]
    args = _parse(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("test accuracy: ")
    args = _parse([*argv[:6], "10", *argv[7:], "--resume", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 6


def test_cli_bad_input(capsys):
    with pytest.raises(SystemExit):
        _parse(["train", "--model", "transformer", "--data", "digits"])
    assert "invalid choice: 'transformer'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["train", "--model", "mlp", "--data", "digits", "--steps", "0"])
    assert "must be >= 1" in capsys.readouterr().err
    args = _parse(["train", "--model", "cnn", "--data", "spirals"])
    assert args.func(args) == 2
    assert "model 'cnn' does not fit data 'spirals'" in capsys.readouterr().err
    args = _parse(["train", "--model", "mlp", "--data", "spirals", "--resume"])
    assert args.func(args) == 2
    assert "--resume needs --checkpoint DIR" in capsys.readouterr().err
    args = _parse(["train", "--model", "mlp", "--data", "spirals", "--seq-len", "10"])
    assert args.func(args) == 2
    assert "--seq-len applies to --data adding only" in capsys.readouterr().err
    args = _parse(["train", "--model", "mlp", "--data", "spirals", "--batch-size", "5000"])
    assert args.func(args) == 2
    assert "batch_size 5000 is larger than the data" in capsys.readouterr().err
