"""Twin-training cases: a few mutants (and the clipping bug) trained beside jax.grad from the same weights.

``TWIN_CASES``: name -> (data, model builder taking the slot, the clean slot, the mutant slot, head, optimizers).
A twin run judges the PARAMETERS after every step, so it sees a bug only through the parameter gradients:
a tie convention that moves no parameter gradient (max-pool ties over a zero background) is invisible to it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import manualbp as mbp
from manualbp.training import data
from manualbp.training.clip import clip_by_global_norm
from mutants import heads as h
from mutants import images as i
from mutants import layers as m
from mutants import recurrent as r


class TwinCase(NamedTuple):
    name: str
    dataset: str  # "spirals", "adding" or "digits-image"
    kind: str  # what the slot is: "layer" (model(slot)), "head", or "optimizer" (the manual path's clipping)
    model: object  # slot -> model (a head or optimizer slot is ignored)
    clean: object
    mutant: object
    head: object = mbp.SoftmaxCrossEntropy()


def _mlp(slot=None):
    return mbp.Sequential(mbp.Dense(8), mbp.Tanh() if slot is None else slot, mbp.Dense(2))


CLIP = 1e-2  # below the gradients' norm on spirals, so every step clips

TWIN_CASES = [
    TwinCase("DenseDbMean", "spirals", "layer", lambda slot: mbp.Sequential(slot, mbp.Tanh(), mbp.Dense(2)),
             mbp.Dense(8), m.DenseDbMean(8)),
    TwinCase("TanhOneMinusY", "spirals", "layer", _mlp, mbp.Tanh(), m.TanhOneMinusY()),
    TwinCase("LayerNormNoMeanTerm", "spirals", "layer",
             lambda slot: mbp.Sequential(mbp.Dense(8), slot, mbp.Tanh(), mbp.Dense(2)), mbp.LayerNorm(),
             m.LayerNormNoMeanTerm()),
    TwinCase("SoftmaxCEForgotMean", "spirals", "head", _mlp, mbp.SoftmaxCrossEntropy(), h.SoftmaxCEForgotMean()),
    TwinCase("LSTMNoTanhPrime", "adding", "layer", lambda slot: mbp.Sequential(slot, mbp.Dense(1)),
             mbp.LSTM(8, return_sequences=False), r.LSTMNoTanhPrime(8, return_sequences=False), mbp.MeanSquaredError()),
    TwinCase("MaxPoolTiesSplit", "digits-image", "layer",
             lambda slot: mbp.Sequential(mbp.Conv2D(4, 3), slot, mbp.Flatten(), mbp.Dense(10)), mbp.MaxPool2D(2),
             i.MaxPoolTiesSplit(2)),
    TwinCase("clip_each_leaf", "spirals", "optimizer", _mlp, clip_by_global_norm(CLIP), h.clip_each_leaf(CLIP)),
]


def load(name: str):
    if name == "spirals":
        return data.spirals(n_train=256, n_test=64)
    if name == "adding":
        return data.adding(T=10, n_train=512, n_test=64)
    return data.digits("image")


def run(case: TwinCase, *, mutated: bool, steps: int = 100, dtype=jnp.float64, seed: int = 0):
    """``train_twin`` of the case's clean or mutated model (plain SGD, lr 0.1); returns its ``Divergence``."""
    d, slot, sgd = load(case.dataset), case.mutant if mutated else case.clean, optax.sgd(0.1)
    model = case.model(slot if case.kind == "layer" else None)
    head = slot if case.kind == "head" else case.head
    optimizer, reference_optimizer = sgd, sgd
    if case.kind == "optimizer":
        optimizer, reference_optimizer = optax.chain(slot, sgd), optax.chain(optax.clip_by_global_norm(CLIP), sgd)
    params, _ = model.init(jax.random.key(seed), d.input_shape, dtype)
    result = mbp.train_twin(model, head, params, d, optimizer=optimizer, reference_optimizer=reference_optimizer,
                            steps=steps, batch_size=32, key=jax.random.key(seed + 1))
    return result.divergence
