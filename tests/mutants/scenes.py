"""Small models around one slot (the layer or head under test), each with a batch maker.

``scene(slot) -> Scene``; ``make(rng, dtype) -> (x, y, mask)``, numpy arrays from a numpy Generator (no XLA
compilation per shape). Every model is a few layers and a few
examples: enough for each catalog bug to show, small enough to compile in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

import manualbp as mbp

B = 3  # examples per batch (vectors: 5)
T = 6  # time steps of the sequence scenes, so t = T - 2 = 4 is where a BPTT carry bug first shows


class Scene(NamedTuple):
    model: object
    head: object
    input_shape: object
    make: Callable


def _vectors(n=5, d=5, classes=3, mask=False):
    def make(rng, dtype):
        m = (np.arange(n) % 3 != 2).astype(dtype) if mask else None  # every third example is padding
        return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, classes, (n,), np.int32), m

    return make


def _normal(shape, label_shape, classes=3):
    def make(rng, dtype):
        return rng.standard_normal((B, *shape)).astype(dtype), rng.integers(0, classes, label_shape, np.int32), None

    return make


def _blobs(rng, dtype, size=8):
    """Images with a zero background and a 2x2 blob in the middle: zero patches, hence exact ties and zeros."""
    x = np.zeros((B, size, size, 1), dtype)
    lo = size // 2 - 1
    x[:, lo:lo + 2, lo:lo + 2] = rng.uniform(0.5, 1.5, (B, 2, 2, 1))
    return x


def _blob_batch(rng, dtype):
    return _blobs(rng, dtype), rng.integers(0, 3, (B,), np.int32), None


def _tokens(rng, dtype):
    """Ids in [0, 6) of a vocabulary of 10 (so ids repeat), a class per step, rows of length T, T - 1, T - 2."""
    mask = (np.arange(T)[None, :] < np.array([[T], [T - 1], [T - 2]])).astype(dtype)  # 0 = padding
    return rng.integers(0, 6, (B, T), np.int32), rng.integers(0, 3, (B, T), np.int32), mask


def dense_chain(slot):
    return Scene(mbp.Sequential(mbp.Dense(6), mbp.Tanh(), slot, mbp.Tanh(), mbp.Dense(3)),
                 mbp.SoftmaxCrossEntropy(), (5,), _vectors())


def activation(slot):
    return Scene(mbp.Sequential(mbp.Dense(6), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (5,), _vectors())


def time_distributed(slot):
    return Scene(mbp.Sequential(slot, mbp.Tanh(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T, 3),
                 _normal((T, 3), (B, T)))


def conv(slot, size=6, channels=2):
    return Scene(mbp.Sequential(slot, mbp.Tanh(), mbp.Flatten(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(),
                 (size, size, channels), _normal((size, size, channels), (B,)))


def blob_pool(slot):
    """A biased conv over the zero background outputs exactly b there: every background window is a tie."""
    return Scene(mbp.Sequential(mbp.Conv2D(2, 3, padding="SAME"), slot, mbp.Flatten(), mbp.Dense(3)),
                 mbp.SoftmaxCrossEntropy(), (8, 8, 1), _blob_batch)


def blob_relu(slot):
    """An unbiased conv over the zero background outputs exactly 0 there: ReLU at its kink."""
    return Scene(mbp.Sequential(mbp.Conv2D(2, 3, padding="SAME", use_bias=False), slot, mbp.Flatten(), mbp.Dense(3)),
                 mbp.SoftmaxCrossEntropy(), (8, 8, 1), _blob_batch)


def avg_pool(slot):
    return Scene(mbp.Sequential(mbp.Conv2D(2, 3, padding="SAME"), mbp.Tanh(), slot, mbp.Flatten(), mbp.Dense(3)),
                 mbp.SoftmaxCrossEntropy(), (5, 5, 1), _normal((5, 5, 1), (B,)))


def layer_norm(slot):
    return Scene(mbp.Sequential(mbp.Dense(6), slot, mbp.Tanh(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (5,),
                 _vectors())


def batch_norm(slot):
    model = mbp.Sequential(mbp.Conv2D(3, 3, padding="SAME", use_bias=False), slot, mbp.Tanh(), mbp.Flatten(),
                           mbp.Dense(3))
    return Scene(model, mbp.SoftmaxCrossEntropy(), (4, 4, 2), _normal((4, 4, 2), (B,)))


def token_embedding(slot):
    return Scene(mbp.Sequential(slot, mbp.RNN(5), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T,), _tokens)


def token_rnn(slot):
    return Scene(mbp.Sequential(mbp.Embedding(10, 4), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T,), _tokens)


def rnn_given_state(slot):
    def make(rng, dtype):
        x = (rng.standard_normal((B, T, 4)).astype(dtype), rng.standard_normal((B, slot.hidden)).astype(dtype))
        return x, rng.integers(0, 3, (B, T), np.int32), None

    return Scene(mbp.Sequential(slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), ((T, 4), (slot.hidden,)), make)


def variable_rnn(slot):
    """Sequences of lengths 6, 3 and 4 (input (x, lengths)), a class at every step, padded steps included."""
    def make(rng, dtype):
        x = rng.standard_normal((B, T, 4)).astype(dtype)
        return (x, np.array([T, 3, 4], np.int32)), rng.integers(0, 3, (B, T), np.int32), None

    return Scene(mbp.Sequential(slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), ((T, 4), ()), make)


def variable_last(slot):
    """Sequences of lengths 6, 3 and 4, one class per sequence from the state after its last real step: the
    gradient of that state must cross the padded steps after it unchanged."""
    def make(rng, dtype):
        x = rng.standard_normal((B, T, 4)).astype(dtype)
        return (x, np.array([T, 3, 4], np.int32)), rng.integers(0, 3, (B,), np.int32), None

    return Scene(mbp.Sequential(slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), ((T, 4), ()), make)


def lstm(slot):
    return Scene(mbp.Sequential(mbp.Dense(4), mbp.Tanh(), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T, 3),
                 _normal((T, 3), (B,)))


def around(slot):
    """Dense -> slot -> Dense: for a container (Residual) that keeps the width 6."""
    return Scene(mbp.Sequential(mbp.Dense(6), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (5,), _vectors())


def fork_node(slot):
    model = mbp.Sequential(mbp.Dense(6), mbp.Parallel(mbp.Dense(6), mbp.Sequential(mbp.Dense(6), mbp.Tanh())), slot,
                           mbp.Dense(3))
    return Scene(model, mbp.SoftmaxCrossEntropy(), (5,), _vectors())


def fork(slot):
    return Scene(mbp.Sequential(mbp.Dense(6), slot, mbp.Multiply(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (5,),
                 _vectors())


def flatten(slot):
    return Scene(mbp.Sequential(mbp.Conv2D(3, 3, padding="SAME"), mbp.Tanh(), slot, mbp.Dense(3)),
                 mbp.SoftmaxCrossEntropy(), (4, 4, 2), _normal((4, 4, 2), (B,)))


def _head_mlp(head, make):
    return Scene(mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(3)), head, (5,), make)


def softmax_head(slot, mask=False):
    return _head_mlp(slot, _vectors(mask=mask))


def sigmoid_head(slot):
    def make(rng, dtype):
        return rng.standard_normal((5, 5)).astype(dtype), rng.integers(0, 2, (5, 3)).astype(dtype), None

    return _head_mlp(slot, make)


def squared_head(slot, mask=False):
    def make(rng, dtype):
        m = (np.arange(5) % 3 != 2).astype(dtype) if mask else None
        return rng.standard_normal((5, 5)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype), m

    return _head_mlp(slot, make)


def conv1d(slot):
    return Scene(mbp.Sequential(slot, mbp.Tanh(), mbp.Flatten(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T + 2, 3),
                 _normal((T + 2, 3), (B,)))


def conv_transpose(slot):
    return Scene(mbp.Sequential(slot, mbp.Tanh(), mbp.Flatten(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (3, 3, 2),
                 _normal((3, 3, 2), (B,)))


def _levels(rng, dtype):
    """Images of the values 0, 1, 2 only: every channel's maximum is tied over many pixels."""
    return rng.integers(0, 3, (B, 4, 4, 1)).astype(dtype), rng.integers(0, 3, (B,), np.int32), None


def global_pool(slot):
    """A 1x1 conv of one channel is monotone per channel, so the input's ties stay exact ties."""
    return Scene(mbp.Sequential(mbp.Conv2D(2, 1), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (4, 4, 1), _levels)


def sequence(slot, d=3):
    """Dense -> Tanh -> slot -> Dense on (B, T, d) float sequences, a class per step."""
    return Scene(mbp.Sequential(mbp.Dense(4), mbp.Tanh(), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T, d),
                 _normal((T, d), (B, T)))


def positional(slot):
    return Scene(mbp.Sequential(mbp.Embedding(10, 4), slot, mbp.Tanh(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(),
                 (T,), _tokens)


def features(slot):
    """Dense -> slot -> Dense on (B, T, 8) sequences, a class per step: for attention and transformer blocks."""
    return Scene(mbp.Sequential(mbp.Dense(8), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T, 5),
                 _normal((T, 5), (B, T)))


def _split_batch(shape, label_shape):
    """4 examples: the batch splits over a mesh's 1, 2 or 4 "batch" devices."""
    def make(rng, dtype):
        return rng.standard_normal((4, *shape)).astype(dtype), rng.integers(0, 3, (4, *label_shape), np.int32), None

    return make


def sharded(slot):
    """Dense -> tanh -> slot -> tanh -> Dense on 4 vectors of 5: for the tensor-parallel and FSDP Dense layers."""
    return Scene(mbp.Sequential(mbp.Dense(8), mbp.Tanh(), slot, mbp.Tanh(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(),
                 (5,), _split_batch((5,), ()))


def sharded_features(slot):
    """Dense -> slot -> Dense on 4 sequences (T, 5), a class per step: for the tensor-parallel attention."""
    return Scene(mbp.Sequential(mbp.Dense(8), slot, mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), (T, 5),
                 _split_batch((T, 5), (T,)))
