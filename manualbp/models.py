"""Built-in models for ``manualbp check``: small, with random data of the right kind.

A first ``manualbp check`` is mostly XLA compiling, so the models are built to
compile little: they share their shapes (width 16, 10 classes), so the random
initialization of one weight shape compiles once for every model that uses it,
and their data is drawn on the host with numpy (no XLA program per data shape).
A model added here should reuse these shapes where it can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.activations import ReLU, Tanh
from manualbp.layers.bidirectional import Bidirectional
from manualbp.layers.conv import Conv2D
from manualbp.layers.dense import Dense
from manualbp.layers.dropout import with_dropout_key
from manualbp.layers.embedding import Embedding
from manualbp.layers.gru import GRU
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.lstm import LSTM
from manualbp.layers.norm import LayerNorm
from manualbp.layers.pool import MaxPool2D
from manualbp.layers.positional import PositionalEmbedding
from manualbp.layers.reshape import Flatten
from manualbp.layers.rnn import RNN
from manualbp.layers.sequential import Sequential
from manualbp.layers.transformer import TransformerBlock

WIDTH, CLASSES, STEPS = 16, 10, 6  # the shapes the built-in models share


class Builtin(NamedTuple):
    """A model, its head, the per-example input shape (``init``'s) and a batch maker.

    ``make_batch(key, batch_size, dtype) -> (x, y, mask)``; mask may be None;
    x may be a tuple (e.g. ``(x, lengths)``).
    """

    model: object
    head: object
    input_shape: tuple
    make_batch: Callable
    description: str


def host_rng(key) -> np.random.Generator:
    """A numpy generator seeded by a jax PRNG key: the demo's data is drawn on the host."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _classification_batch(input_shape):
    def make(key, batch_size, dtype):
        rng = host_rng(key)
        x = rng.standard_normal((batch_size, *input_shape)).astype(dtype)
        return jnp.asarray(x), jnp.asarray(rng.integers(0, CLASSES, (batch_size,))), None

    return make


def mlp() -> Builtin:
    model = Sequential(Dense(WIDTH), ReLU(), Dense(WIDTH), Tanh(), Dense(CLASSES))
    return Builtin(model, SoftmaxCrossEntropy(), (WIDTH,), _classification_batch((WIDTH,)),
                   "MLP 16-16-16-10, ReLU and tanh, softmax cross-entropy")


def _token_sequence_batch(key, batch_size, dtype):
    """Ids (B, T) in [0, WIDTH), a class per step (B, T), and a mask (B, T) for random lengths in [1, T]."""
    rng = host_rng(key)
    x = rng.integers(0, WIDTH, (batch_size, STEPS))
    y = rng.integers(0, CLASSES, (batch_size, STEPS))
    lengths = rng.integers(1, STEPS + 1, (batch_size, 1))
    mask = (np.arange(STEPS)[None, :] < lengths).astype(dtype)  # 1 = real step, 0 = padding at the end
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)


def rnn() -> Builtin:
    model = Sequential(Embedding(WIDTH, WIDTH), RNN(WIDTH), Dense(CLASSES))
    return Builtin(model, SoftmaxCrossEntropy(), (STEPS,), _token_sequence_batch,
                   "Embedding 16x16 -> RNN 16 (tanh) -> Dense 10 at every step, softmax cross-entropy over (B, T) "
                   "with a padding mask")


def _variable_length_batch(key, batch_size, dtype):
    """((x (B, T, 16), lengths (B,) in [0, T]), a class per sequence, no mask)."""
    rng = host_rng(key)
    x = rng.standard_normal((batch_size, STEPS, WIDTH)).astype(dtype)
    lengths = rng.integers(0, STEPS + 1, (batch_size,))
    return (jnp.asarray(x), jnp.asarray(lengths)), jnp.asarray(rng.integers(0, CLASSES, (batch_size,))), None


def lstm() -> Builtin:
    model = Sequential(LSTM(WIDTH, return_sequences=False, variable_length=True), Dense(CLASSES))
    return Builtin(model, SoftmaxCrossEntropy(), ((STEPS, WIDTH), ()), _variable_length_batch,
                   "LSTM 16 over sequences of lengths 0..6 (padded steps keep the state) -> Dense 10 on the last "
                   "real step, softmax cross-entropy")


def cnn() -> Builtin:
    model = Sequential(Conv2D(4, 3, padding="SAME"), ReLU(), MaxPool2D(2), Conv2D(4, 3, padding="SAME"), ReLU(),
                       MaxPool2D(2), Flatten(), Dense(CLASSES))
    return Builtin(model, SoftmaxCrossEntropy(), (8, 8, 1), _classification_batch((8, 8, 1)),
                   "CNN 8x8x1: conv 3x3 4 SAME -> ReLU -> maxpool 2 -> conv 3x3 4 SAME -> ReLU -> maxpool 2 -> "
                   "flatten 16 -> dense 10, softmax cross-entropy")


def gru() -> Builtin:
    model = Sequential(Dense(WIDTH), Tanh(), Bidirectional(GRU(WIDTH, return_sequences=False)), Dense(CLASSES))
    return Builtin(model, SoftmaxCrossEntropy(), (STEPS, WIDTH), _classification_batch((STEPS, WIDTH)),
                   "Dense 16->16 (tanh) at every step -> Bidirectional GRU 16+16 (each direction's last state) -> "
                   "Dense 10, softmax cross-entropy")


def gpt() -> Builtin:
    blocks = [TransformerBlock(WIDTH, 2, causal=True, dropout=0.1) for _ in range(2)]
    model = Sequential(Embedding(WIDTH, WIDTH), PositionalEmbedding(STEPS, WIDTH), *blocks, LayerNorm(), Dense(CLASSES))
    # the dropout masks come from a fixed key, so the manual and the jax.grad pass drop the same units
    return Builtin(with_dropout_key(model, jax.random.key(0)), SoftmaxCrossEntropy(), (STEPS,), _token_sequence_batch,
                   "GPT: token + positional embedding (16 ids, 16 features) -> 2 pre-norm causal transformer blocks "
                   "(2 heads, MLP 64, GELU, dropout 0.1 with a fixed key) -> LayerNorm -> Dense 10 at every step, "
                   "softmax cross-entropy with a padding mask")


# name -> builder; other files' models are added to this table
MODELS: dict[str, Callable[[], Builtin]] = {"mlp": mlp, "rnn": rnn, "lstm": lstm, "gru": gru, "cnn": cnn, "gpt": gpt}


def get(name: str) -> Builtin:
    """The built-in model ``name``; ValueError listing the choices otherwise."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
