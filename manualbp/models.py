"""Built-in models for ``manualbp check``: small, with random data of the right kind."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from manualbp.activations import ReLU, Tanh
from manualbp.dense import Dense
from manualbp.losses import SoftmaxCrossEntropy
from manualbp.sequential import Sequential


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


# name -> builder; other files' models are added to this table
MODELS: dict[str, Callable[[], Builtin]] = {"mlp": mlp}


def get(name: str) -> Builtin:
    """The built-in model ``name``; ValueError listing the choices otherwise."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
