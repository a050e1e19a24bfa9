"""Models shaped for the training data of ``manualbp.training.data``, with the settings that reach the targets.

``task(model, data)`` pairs a model name (mlp, cnn, rnn, lstm, gru, gpt) with a data
name (digits, spirals, adding, sort) and returns the model, its head, the loader
and default hyperparameters. Shapes (batch excluded):

- mlp / digits: x (64,) standardized pixels -> Dense(256) ReLU Dense(10) -> logits (10,)
- cnn / digits: x (8, 8, 1) -> Conv2D(16, 3x3) ReLU MaxPool(2) Conv2D(32, 3x3) ReLU MaxPool(2)
  Flatten Dense(10) -> (10,)
- rnn, lstm, gru / digits: x (8, 8), one row per step -> RNN/LSTM/GRU(64, last step) Dense(10) -> (10,)
- mlp / spirals: x (2,) -> Dense(64) tanh Dense(64) tanh Dense(2) -> (2,)
- rnn, lstm, gru / adding: x (T, 2) -> RNN/LSTM/GRU(64, last step) Dense(1) -> (1,), MeanSquaredError head.
- gpt / sort: ids (11,) -> Embedding(10, 64) + PositionalEmbedding(11, 64) -> 2 causal TransformerBlocks (4 heads)
  -> LayerNorm -> Dense(11) at every position -> (11, 11); extra test figure: sequences fully correct.
- gpt / digits: x (8, 8), one row of pixels per token -> Dense(64) + PositionalEmbedding(8, 64) -> 2 non-causal
  TransformerBlocks (4 heads) -> LayerNorm -> Flatten -> Dense(10) -> (10,).
- gpt with a mesh: the same, each block ``parallel_block`` (attention heads and MLP split across the model axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

from manualbp.layers.activations import ReLU, Tanh
from manualbp.layers.base import as_array
from manualbp.layers.conv import Conv2D
from manualbp.layers.dense import Dense
from manualbp.layers.embedding import Embedding
from manualbp.layers.gru import GRU
from manualbp.layers.heads import MeanSquaredError, SoftmaxCrossEntropy
from manualbp.layers.lstm import LSTM
from manualbp.layers.norm import LayerNorm
from manualbp.layers.parallel_attention import parallel_block
from manualbp.layers.pool import MaxPool2D
from manualbp.layers.positional import PositionalEmbedding
from manualbp.layers.reshape import Flatten
from manualbp.layers.rnn import RNN
from manualbp.layers.sequential import Sequential
from manualbp.layers.transformer import TransformerBlock
from manualbp.training import data as datasets
from manualbp.training import parallel
from manualbp.training.step import predict_compiled

MODEL_NAMES = ("mlp", "cnn", "rnn", "lstm", "gru", "gpt")
DATA_NAMES = ("digits", "spirals", "adding", "sort")
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}


class Task(NamedTuple):
    """A model for a dataset, its head, a loader ``load(dtype) -> Dataset`` and default settings."""

    model: object
    head: object
    load: Callable
    optimizer: str
    lr: float
    steps: int
    batch_size: int
    description: str
    extra: Callable | None = None  # (test logits, test labels) -> {name: value}: the task's own test figures


def _classifier(model, load, optimizer, lr, steps, batch_size, description):
    return Task(model, SoftmaxCrossEntropy(), load, optimizer, lr, steps, batch_size, description)


def _digits(layout, standardize=False):
    return lambda dtype: datasets.digits(layout, dtype, standardize)


def _blocks(mesh, causal):
    """GPT's 2 blocks (64 features, 4 heads): tensor-parallel over ``mesh``'s model axis when a mesh is given."""
    if mesh is None:
        return [TransformerBlock(64, 4, causal=causal) for _ in range(2)]
    return [parallel_block(64, 4, mesh, causal=causal) for _ in range(2)]


def _gpt_sort(mesh=None):
    return Sequential(Embedding(10, 64), PositionalEmbedding(11, 64), *_blocks(mesh, True), LayerNorm(), Dense(11))


def _gpt_digits(mesh=None):
    return Sequential(Dense(64), PositionalEmbedding(8, 64), *_blocks(mesh, False), LayerNorm(), Flatten(), Dense(10))


def _cnn():
    return Sequential(Conv2D(16, 3), ReLU(), MaxPool2D(2), Conv2D(32, 3), ReLU(), MaxPool2D(2), Flatten(), Dense(10))


TASKS: dict[tuple[str, str], Callable[[], Task]] = {
    ("mlp", "digits"): lambda: _classifier(
        Sequential(Dense(256), ReLU(), Dense(10)), _digits("flat", standardize=True), "adam", 1e-3, 3000, 64,
        "MLP 64-256-10 (ReLU) on 8x8 digits (standardized pixels)"),
    ("cnn", "digits"): lambda: _classifier(
        _cnn(), _digits("image"), "momentum", 0.05, 2000, 64,
        "CNN conv16-pool-conv32-pool-dense10 (ReLU) on 8x8x1 digits"),
    ("rnn", "digits"): lambda: _classifier(
        Sequential(RNN(64, return_sequences=False), Dense(10)), _digits("rows"), "adam", 3e-3, 2000, 64,
        "RNN(64, tanh) reading the 8 rows of each digit, last state -> Dense(10)"),
    ("lstm", "digits"): lambda: _classifier(
        Sequential(LSTM(64, return_sequences=False), Dense(10)), _digits("rows"), "adam", 3e-3, 2000, 64,
        "LSTM(64) reading the 8 rows of each digit, last state -> Dense(10)"),
    ("mlp", "spirals"): lambda: _classifier(
        Sequential(Dense(64), Tanh(), Dense(64), Tanh(), Dense(2)), lambda dtype: datasets.spirals(dtype=dtype),
        "adam", 1e-2, 2000, 64, "MLP 2-64-64-2 (tanh) on two spirals"),
    ("rnn", "adding"): lambda: Task(
        Sequential(RNN(64, return_sequences=False), Dense(1)), MeanSquaredError(),
        lambda dtype: datasets.adding(50, dtype=dtype), "adam", 1e-3, 3000, 64,
        "RNN(64, tanh) on the adding problem, T=50, last state -> Dense(1)"),
    ("lstm", "adding"): lambda: Task(
        Sequential(LSTM(64, return_sequences=False), Dense(1)), MeanSquaredError(),
        lambda dtype: datasets.adding(50, dtype=dtype), "adam", 1e-3, 3000, 64,
        "LSTM(64) on the adding problem, T=50, last state -> Dense(1)"),
    ("gru", "digits"): lambda: _classifier(
        Sequential(GRU(64, return_sequences=False), Dense(10)), _digits("rows"), "adam", 3e-3, 2000, 64,
        "GRU(64) reading the 8 rows of each digit, last state -> Dense(10)"),
    ("gru", "adding"): lambda: Task(
        Sequential(GRU(64, return_sequences=False), Dense(1)), MeanSquaredError(),
        lambda dtype: datasets.adding(50, dtype=dtype), "adam", 1e-3, 3000, 64,
        "GRU(64) on the adding problem, T=50, last state -> Dense(1)"),
    ("gpt", "sort"): lambda mesh=None: Task(
        _gpt_sort(mesh), SoftmaxCrossEntropy(), lambda dtype: datasets.sort_digits(6, 10), "adam", 1e-3, 3000, 64,
        "GPT (2 causal blocks, 64 features, 4 heads) sorting 6 digits, a blank while reading then the sorted list",
        extra=lambda logits, y: {"sequences fully correct": datasets.sequence_accuracy(logits, y)}),
    ("gpt", "digits"): lambda mesh=None: _classifier(
        _gpt_digits(mesh), _digits("rows"), "adam", 1e-3, 2000, 64,
        "transformer (2 blocks, 64 features, 4 heads) reading the 8 rows of each digit as tokens, flatten -> Dense(10)"),
}


def task(model: str, data: str, mesh=None) -> Task:
    """The ``Task`` for a model name and a data name; ValueError listing the valid pairs otherwise.

    ``mesh`` (``parallel.make_mesh(n, model=m)``): the gpt models with tensor-parallel blocks on it
    (``parallel_block``: the same parameters, split across the model axis).
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_NAMES)}")
    if data not in DATA_NAMES:
        raise ValueError(f"unknown data {data!r}; choose one of {list(DATA_NAMES)}")
    if (model, data) not in TASKS:
        pairs = ", ".join(f"{m}/{d}" for m, d in TASKS)
        raise ValueError(f"model {model!r} does not fit data {data!r}; the pairs are: {pairs}")
    if mesh is None:
        return TASKS[(model, data)]()
    if model != "gpt":
        raise ValueError(f"model {model!r} has no tensor-parallel form; model parallelism applies to gpt")
    return TASKS[(model, data)](mesh)


def extra_metrics(task: Task, params, data, stats=None) -> dict:
    """The task's own test figures (e.g. sort: the fraction of test lists sorted exactly), from the manual forward
    in evaluation mode (``stats``: the running statistics training kept; the program ``evaluate`` compiled)."""
    if task.extra is None:
        return {}
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x = parallel.beside(params, as_array(datasets.as_inputs(data.x_test, dtype)))
    logits = predict_compiled(task.model, params, {} if stats is None else stats, x)
    return task.extra(parallel.to_host(logits), data.y_test)


def optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """An optax optimizer by name (sgd, momentum, adam) with learning rate ``lr``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    return OPTIMIZERS[name](lr)
