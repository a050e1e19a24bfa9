"""The training loop: history, logging, one compiled step, non-finite losses, bad input, the built-in tasks."""

import jax
import jax.numpy as jnp
import optax
import pytest

import manualbp as mbp
from manualbp.training import data, zoo
from manualbp.training.step import PathState, make_step
from manualbp.training.train import NonFiniteError, train


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
    state = {"manual": PathState(params, opt.init(params), {})}
    for i in range(4):
        x, y = spirals.x_train[i * 32:(i + 1) * 32], spirals.y_train[i * 32:(i + 1) * 32]
        state, _ = step(state, x, y)
    assert step._cache_size() == 1
    assert make_step(model, head, {"manual": opt}, "classification") is step


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


def test_invalid_values_in_the_data_are_refused_before_step_1():
    """Embedding ids beyond the vocabulary (only the test split): the jitted step would read NaN rows; refused first."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, (16, 3))
    test_ids = ids.copy()
    test_ids[3, 1] = 7
    ds = data.Dataset("ids", ids, rng.integers(0, 2, 16).astype(np.int32), test_ids, np.zeros(16, np.int32),
                      "classification", 2)
    model = mbp.Sequential(mbp.Embedding(5, 4), mbp.Flatten(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (3,), jnp.float32)
    with pytest.raises(ValueError, match=r"Embedding: .*\[0, 5\)"):
        train(model, mbp.SoftmaxCrossEntropy(), params, ds, steps=1, batch_size=8, key=jax.random.key(0))


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
    inputs = {"mlp": (64,), "cnn": (8, 8, 1), "rnn": (8, 8), "lstm": (8, 8), "gru": (8, 8), "gpt": (8, 8)}
    for (model_name, data_name), make in zoo.TASKS.items():
        shape = {"digits": inputs[model_name], "spirals": (2,), "adding": (50, 2), "sort": (11,)}[data_name]
        dtype = jnp.int32 if data_name == "sort" else jnp.float32  # sort: token ids
        model = make().model
        # traced, not run: init and forward of every task model on one example
        def forward(k, model=model, shape=shape, dtype=dtype):
            return model.forward(model.init(k, shape)[0], jnp.zeros((1, *shape), dtype))[0]

        out = jax.eval_shape(forward, jax.random.key(0))
        assert out.shape[1:] == outputs[data_name], (model_name, data_name)


def test_a_loss_gone_non_finite_stops_train_and_names_the_step(spirals):
    model, head = mbp.Sequential(mbp.Dense(16), mbp.ReLU(), mbp.Dense(2)), mbp.SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (2,), jnp.float32)
    logged = []
    with pytest.raises(NonFiniteError, match=r"the manual loss became non-finite at step (\d+)") as e:
        train(model, head, params, spirals, optimizer=optax.sgd(1e20), steps=60, batch_size=32, key=jax.random.key(1),
              log_every=5, on_log=lambda step, values: logged.append(step))
    assert e.value.step == 3 and logged == []  # stopped at the first log point after it (5), not at step 60
    with pytest.raises(NonFiniteError, match="the reference loss became non-finite at step"):  # no log: found at the end
        train(model, head, params, spirals, optimizer=optax.sgd(1e20), steps=8, batch_size=32, key=jax.random.key(1),
              grad="reference")


@pytest.mark.parametrize("twin", [False, True], ids=["train", "train_twin"])
def test_data_holding_nan_is_refused_before_step_1_naming_the_array_and_the_entry(spirals, twin):
    """Not "the manual loss became non-finite ... lower the learning rate" steps later: the data is named."""
    model, head, params = _mlp()
    x = spirals.x_train.copy()
    x[37, 1] = float("nan")
    bad = spirals._replace(x_train=x)
    where = "train_twin" if twin else "train"
    with pytest.raises(ValueError, match=rf"{where}: data 'spirals': x_train holds 1 NaN/Inf value\(s\), the first nan "
                                         r"at index \(37, 1\) \(example 37\); clean or drop those examples"):
        (mbp.train_twin if twin else train)(model, head, params, bad, steps=2, batch_size=8, key=jax.random.key(0))


@pytest.mark.parametrize("kw, error, match", [
    ({"batch_size": True}, ValueError, r"train: batch_size must be a positive integer, got True"),
    ({"steps": True}, ValueError, r"train: steps must be a positive integer, got True"),
    ({"key": 3}, TypeError, r"train: expected a PRNG key \(jax.random.key\(seed\)\), got int 3"),
    ({"optimizer": 3}, TypeError, r"train: optimizer must be an optax.GradientTransformation .*got int"),
    ({"log_every": -1}, ValueError, r"train: log_every must be an int >= 0, got -1"),
    ({"on_log": 3}, TypeError, r"train: expected on_log to be a function \(step, \{name: float\}\), got int 3"),
    ({"resume": "yes"}, TypeError, r"train: resume must be True or False, got str 'yes'"),
])
def test_train_arguments_are_refused_before_step_1(spirals, kw, error, match):
    model, head, params = _mlp()
    with pytest.raises(error, match=match):
        train(model, head, params, spirals, **{"steps": 2, "batch_size": 8, "key": jax.random.key(0), **kw})


def test_initial_params_holding_nan_are_refused(spirals):
    model, head, params = _mlp()
    params = jax.tree_util.tree_map(lambda v: v * jnp.nan, params)
    with pytest.raises(ValueError, match=r"train: the initial params contains NaN or Inf"):
        train(model, head, params, spirals, steps=2, batch_size=8, key=jax.random.key(0))
