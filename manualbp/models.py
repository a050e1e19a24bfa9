"""Built-in models for ``manualbp check``: small, with random data of the right kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from manualbp.layers.activations import ReLU, Tanh
from manualbp.layers.conv import Conv2D
from manualbp.layers.dense import Dense
from manualbp.layers.dropout import with_dropout_key
from manualbp.layers.embedding import Embedding
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.lstm import LSTM
from manualbp.layers.norm import LayerNorm
from manualbp.layers.pool import MaxPool2D
from manualbp.layers.positional import PositionalEmbedding
from manualbp.layers.recurrent import RNN
from manualbp.layers.reshape import Flatten
from manualbp.layers.sequential import Sequential
from manualbp.layers.transformer import TransformerBlock


class Builtin(NamedTuple):
    """A model, its head, the per-example input shape and a batch maker.

    ``make_batch(key, batch_size, dtype) -> (x, y, mask)``; mask may be None.
    """

    model: object
    head: object
    input_shape: tuple
    make_batch: Callable
    description: str


def _classification_batch(input_shape, classes):
    def make(key, batch_size, dtype):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, *input_shape), dtype)
        y = jax.random.randint(ky, (batch_size,), 0, classes)
        return x, y, None

    return make


def mlp() -> Builtin:
    model = Sequential(Dense(32), ReLU(), Dense(32), Tanh(), Dense(10))
    return Builtin(model, SoftmaxCrossEntropy(), (20,), _classification_batch((20,), 10),
                   "MLP 20-32-32-10, ReLU and tanh, softmax cross-entropy")


def _token_sequence_batch(vocab, steps, classes):
    """Ids (B, T) in [0, vocab), a class per step (B, T), and a mask (B, T) for random lengths in [1, T]."""

    def make(key, batch_size, dtype):
        kx, ky, kl = jax.random.split(key, 3)
        x = jax.random.randint(kx, (batch_size, steps), 0, vocab)
        y = jax.random.randint(ky, (batch_size, steps), 0, classes)
        lengths = jax.random.randint(kl, (batch_size, 1), 1, steps + 1)
        mask = (jnp.arange(steps)[None, :] < lengths).astype(dtype)  # 1 = real step, 0 = padding at the end
        return x, y, mask

    return make


def rnn() -> Builtin:
    model = Sequential(Embedding(20, 8), RNN(16), Dense(5))
    return Builtin(model, SoftmaxCrossEntropy(), (6,), _token_sequence_batch(20, 6, 5),
                   "Embedding 20x8 -> RNN 16 (tanh) -> Dense 5 at every step, softmax cross-entropy over (B, T) "
                   "with a padding mask")


def lstm() -> Builtin:
    model = Sequential(Dense(8), Tanh(), LSTM(16, return_sequences=False), Dense(5))
    return Builtin(model, SoftmaxCrossEntropy(), (6, 3), _classification_batch((6, 3), 5),
                   "Dense 3->8 (tanh) at every step -> LSTM 16 -> Dense 5 on the last step, softmax cross-entropy")


def cnn() -> Builtin:
    model = Sequential(Conv2D(4, 3, padding="SAME"), ReLU(), MaxPool2D(2), Conv2D(8, 3, padding="SAME"), ReLU(),
                       MaxPool2D(2), Flatten(), Dense(10))
    return Builtin(model, SoftmaxCrossEntropy(), (8, 8, 1), _classification_batch((8, 8, 1), 10),
                   "CNN 8x8x1: conv 3x3 4 SAME -> ReLU -> maxpool 2 -> conv 3x3 8 SAME -> ReLU -> maxpool 2 -> "
                   "flatten -> dense 10, softmax cross-entropy")


def gpt() -> Builtin:
    vocab, steps, features = 13, 8, 16
    model = Sequential(Embedding(vocab, features), PositionalEmbedding(steps, features),
                       TransformerBlock(features, 2, causal=True, dropout=0.1),
                       TransformerBlock(features, 2, causal=True, dropout=0.1), LayerNorm(), Dense(vocab))
    # the dropout masks come from a fixed key, so the manual and the jax.grad pass drop the same units
    return Builtin(with_dropout_key(model, jax.random.key(0)), SoftmaxCrossEntropy(), (steps,),
                   _token_sequence_batch(vocab, steps, vocab),
                   "GPT: token + positional embedding (13 ids, 16 features) -> 2 pre-norm causal transformer blocks "
                   "(2 heads, MLP 64, GELU, dropout 0.1 with a fixed key) -> LayerNorm -> Dense 13 at every step, "
                   "softmax cross-entropy with a padding mask")


# name -> builder; other files' models are added to this table
MODELS: dict[str, Callable[[], Builtin]] = {"mlp": mlp, "rnn": rnn, "lstm": lstm, "cnn": cnn}
MODELS["gpt"] = gpt


def get(name: str) -> Builtin:
    """The built-in model ``name``; ValueError listing the choices otherwise."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
