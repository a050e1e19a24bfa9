"""Bad input, tried as an adversary would: every layer, the heads, the checkers, training, files and the CLI.

Each case is one call with one thing wrong (or, as a control, nothing wrong), and what must happen:

* ``error``: a ValueError/TypeError (a ``CheckpointError``, a ``NotImplementedError``) raised by
  manualbp's own code, whose message names the layer or function (``who``); the CLI: exit status 2
  with ``manualbp`` or argparse's usage error, no traceback;
* ``valid``: the call runs (a control: the same call with nothing wrong, or an input that is defined
  behaviour);
* ``nan``: under the user's own ``jax.jit`` an invalid value cannot raise, so the loss must be NaN,
  never a plausible number;
* ``inconclusive``: a check over nothing (empty arrays) must say INCONCLUSIVE, not PASS.

Each outcome is classified:

* ``clear``: a bad input refused as above; ``handled``: a valid case that ran (or gave the NaN, or
  said INCONCLUSIVE);
* ``cryptic``: an exception from inside jax, XLA, NumPy or Python (an AttributeError, a
  ZeroDivisionError, XLA's RESOURCE_EXHAUSTED...), or ours without the name of what was wrong;
* ``silent``: a bad input accepted without a word (or a plausible number where NaN was due);
* ``refused``: a valid input refused (a false alarm);
* ``crash``: the process died (a C++ CHECK failure); the cases run in a worker process, restarted after
  the case that killed it.

The figure that matters is 0 cryptic, 0 silent, 0 refused, 0 crash (docs/evidence.md quotes it).

Run: .venv/bin/python scripts/bad_input_fuzz.py [--every N] [--json OUT] [--verbose]
(about 1,000 cases, a few minutes on a shared 2-core machine; ``--every 10`` runs one case in ten;
tests/test_bad_input_fuzz.py runs a slice of it.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Case:
    group: str  # layer, head, api, train, files, cli
    who: str  # what an error must name: "Dense", "compare", "train", "manualbp train"
    what: str  # the thing that is wrong ("valid: ..." for a control)
    run: Callable[[], object]
    expect: str = "error"  # error | valid | nan | inconclusive
    names: tuple = ()  # other names an error may give instead of ``who``: the layer inside a container that is wrong

    @property
    def name(self) -> str:
        return f"{self.group}: {self.who}: {self.what}"


# ----------------------------------------------------------------------------------------------------------- fixtures

_GIVEN = object()  # "the fixture's own value" (None is a case of its own: params None, x None)

def _jax():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import manualbp as mbp
    return jax, jnp, np, mbp


def _key(seed=0):
    jax, *_ = _jax()
    return jax.random.key(seed)


def _x(shape, dtype="float32", seed=0):
    jax, _, np, _ = _jax()
    return jax.device_put(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _ids(shape, high):
    jax, _, np, _ = _jax()
    return jax.device_put(np.random.default_rng(0).integers(0, high, shape).astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Spec:
    """A layer, the shape ``init`` takes, and a valid input (batch 2)."""

    make: Callable
    input_shape: object
    x: Callable  # () -> a valid input for the layer
    float_input: bool = True  # x is a float array (Embedding: integer ids; tuples: False)
    inside: tuple = ()  # the layers a container holds (an error may name the one that is wrong)


def _layer_specs() -> dict:
    _, jnp, _, mbp = _jax()
    b = 2

    def x(*shape):
        return lambda: _x((b, *shape))

    def elementwise():
        return mbp.Elementwise(jnp.sin, jnp.cos, label="sine")

    return {
        "Dense": Spec(lambda: mbp.Dense(3), (4,), x(4)),
        "ReLU": Spec(mbp.ReLU, (4,), x(4)),
        "Sigmoid": Spec(mbp.Sigmoid, (4,), x(4)),
        "Tanh": Spec(mbp.Tanh, (4,), x(4)),
        "Identity": Spec(mbp.Identity, (4,), x(4)),
        "LeakyReLU": Spec(lambda: mbp.LeakyReLU(0.1), (4,), x(4)),
        "Softplus": Spec(mbp.Softplus, (4,), x(4)),
        "GELU": Spec(mbp.GELU, (4,), x(4)),
        "GELU(exact)": Spec(lambda: mbp.GELU(approximate=False), (4,), x(4)),
        "sine": Spec(elementwise, (4,), x(4)),
        "Softmax": Spec(mbp.Softmax, (4,), x(4)),
        "Conv2D": Spec(lambda: mbp.Conv2D(2, (3, 3)), (5, 5, 1), x(5, 5, 1)),
        "Conv1D": Spec(lambda: mbp.Conv1D(2, 3), (6, 2), x(6, 2)),
        "ConvTranspose2D": Spec(lambda: mbp.ConvTranspose2D(2, (2, 2)), (4, 4, 1), x(4, 4, 1)),
        "MaxPool2D": Spec(lambda: mbp.MaxPool2D(2), (4, 4, 1), x(4, 4, 1)),
        "AvgPool2D": Spec(lambda: mbp.AvgPool2D(2), (4, 4, 1), x(4, 4, 1)),
        "GlobalAvgPool2D": Spec(mbp.GlobalAvgPool2D, (4, 4, 2), x(4, 4, 2)),
        "GlobalMaxPool2D": Spec(mbp.GlobalMaxPool2D, (4, 4, 2), x(4, 4, 2)),
        "Flatten": Spec(mbp.Flatten, (2, 3), x(2, 3)),
        "LayerNorm": Spec(mbp.LayerNorm, (3,), x(3)),
        "BatchNorm": Spec(mbp.BatchNorm, (3,), x(3)),
        "Dropout": Spec(lambda: mbp.Dropout(0.5, key=_key(1)), (4,), x(4)),
        "Embedding": Spec(lambda: mbp.Embedding(5, 4), (3,), lambda: _ids((b, 3), 5), float_input=False),
        "PositionalEmbedding": Spec(lambda: mbp.PositionalEmbedding(8, 4), (5, 4), x(5, 4)),
        "RNN": Spec(lambda: mbp.RNN(3), (5, 2), x(5, 2)),
        "LSTM": Spec(lambda: mbp.LSTM(3), (5, 2), x(5, 2)),
        "GRU": Spec(lambda: mbp.GRU(3, return_sequences=False), (5, 2), x(5, 2)),
        "LSTM(lengths)": Spec(lambda: mbp.LSTM(3, variable_length=True), ((5, 2), ()),
                              lambda: (_x((b, 5, 2)), _ids((b,), 6)), float_input=False),
        "Bidirectional": Spec(lambda: mbp.Bidirectional(mbp.GRU(3)), (5, 2), x(5, 2), inside=("GRU",)),
        "MultiHeadAttention": Spec(lambda: mbp.MultiHeadAttention(2), (3, 4), x(3, 4)),
        "TransformerBlock": Spec(lambda: mbp.TransformerBlock(4, 2), (3, 4), x(3, 4),
                                 inside=("LayerNorm", "MultiHeadAttention", "Dense", "GELU")),
        "Residual": Spec(lambda: mbp.Residual(mbp.Dense(4)), (4,), x(4), inside=("Dense",)),
        "Sequential": Spec(lambda: mbp.Sequential(mbp.Dense(3), mbp.ReLU()), (4,), x(4), inside=("Dense", "ReLU")),
        "Parallel": Spec(lambda: mbp.Parallel(mbp.Dense(2), mbp.Dense(3)), (4,), x(4), inside=("Dense",)),
        "Add": Spec(mbp.Add, ((4,), (4,)), lambda: (_x((b, 4)), _x((b, 4), seed=1)), float_input=False),
        "Multiply": Spec(mbp.Multiply, ((4,), (4,)), lambda: (_x((b, 4)), _x((b, 4), seed=1)), float_input=False),
        # the tensor-parallel layers, on a 1-device (batch, model) mesh
        "ColumnParallelDense": Spec(lambda: mbp.ColumnParallelDense(4, _mesh()), (4,), x(4), inside=("Dense",)),
        "RowParallelDense": Spec(lambda: mbp.RowParallelDense(3, _mesh()), (4,), x(4), inside=("Dense",)),
        "FSDPDense": Spec(lambda: mbp.FSDPDense(3, _mesh()), (4,), x(4), inside=("Dense",)),
        "ParallelAttention": Spec(lambda: mbp.ParallelAttention(2, _mesh()), (3, 4), x(3, 4),
                                  inside=("MultiHeadAttention",)),
    }


def _mesh():
    jax, _, np, _ = _jax()
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))


@cache
def _built(label):
    """(layer, params, x, y, cache) of a layer spec, made once."""
    spec = _layer_specs()[label]
    layer = spec.make()
    params, _ = layer.init(_key(), spec.input_shape)
    x = spec.x()
    y, c = layer.forward(params, x)
    return layer, params, x, y, c


def _first(shape, size):
    """``shape`` with its first size (in the first part of a tuple input's shape) replaced by ``size``."""
    return (size, *shape[1:]) if isinstance(shape[0], int) else (_first(shape[0], size), *shape[1:])


def _name(label):
    return label.split("(")[0] if label != "sine" else "sine"


def _replace_leaf(tree, fn):
    jax, *_ = _jax()
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [fn(leaves[0]), *leaves[1:]])


def _map_floats(tree, fn):
    jax, jnp, _, _ = _jax()
    return jax.tree_util.tree_map(lambda v: fn(v) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree)


# ------------------------------------------------------------------------------------------------------------ layers

def layer_cases() -> list[Case]:
    jax, jnp, np, mbp = _jax()
    out = []
    for label, spec in _layer_specs().items():
        who = _name(label)

        def add(what, run, expect="error", who=who, spec=spec):
            out.append(Case("layer", who, what, run, expect, spec.inside))

        def init(key=None, shape=None, dtype=jnp.float32, spec=spec):
            return spec.make().init(_key() if key is None else key, spec.input_shape if shape is None else shape, dtype)

        add("valid: init", lambda init=init: init(), "valid")
        add("init: key 3 (an int)", lambda init=init: init(key=3))
        add("init: key 'abc' (a str)", lambda init=init: init(key="abc"))
        add("init: key a float array", lambda init=init: init(key=jnp.ones(2)))
        add("valid: init with a raw uint32[2] key (jax.random.PRNGKey)", lambda init=init: init(key=jax.random.PRNGKey(0)),
            "valid")
        add("init: a negative size in the input shape", lambda init=init, spec=spec: init(shape=_first(spec.input_shape, -3)))
        add("init: a zero size in the input shape", lambda init=init, spec=spec: init(shape=_first(spec.input_shape, 0)))
        add("init: input shape 4 (an int, not a tuple)", lambda init=init: init(shape=4))
        add("init: input shape (4.5,) (a float size)", lambda init=init: init(shape=(4.5,)))
        add("init: dtype int32", lambda init=init: init(dtype=jnp.int32))
        add("init: dtype 'banana'", lambda init=init: init(dtype="banana"))
        add("init: dtype complex64", lambda init=init: init(dtype=jnp.complex64))

        def fwd(params=_GIVEN, x=_GIVEN, label=label):
            layer, p, x0, _, _ = _built(label)
            return layer.forward(p if params is _GIVEN else params, x0 if x is _GIVEN else x)

        def params_of(label=label):
            return _built(label)[1]

        has_params = bool(jax.tree_util.tree_leaves(spec.make().init(_key(), spec.input_shape)[0]))
        add("valid: forward", lambda fwd=fwd: fwd(), "valid")
        add("forward: params {'nope': 1}", lambda fwd=fwd: fwd(params={"nope": 1}))
        add("forward: params a str", lambda fwd=fwd: fwd(params="params"))
        if has_params:
            add("forward: params None", lambda fwd=fwd: fwd(params=None))
            # an Embedding's table sets its output's dtype (its input is ids): a bfloat16 table is a valid choice
            add("forward: a parameter of another dtype (bfloat16)",
                lambda fwd=fwd, p=params_of: fwd(params=_map_floats(p(), lambda v: v.astype(jnp.bfloat16))),
                "valid" if label == "Embedding" else "error")
            add("forward: a parameter of another shape",
                lambda fwd=fwd, p=params_of: fwd(params=_replace_leaf(p(), lambda v: jnp.zeros((*v.shape, 2), v.dtype))))
            add("forward: a parameter holding an int array",
                lambda fwd=fwd, p=params_of: fwd(params=_replace_leaf(p(), lambda v: jnp.zeros(v.shape, jnp.int32))))
        else:
            add("valid: forward with params None (a parameter-free layer)", lambda fwd=fwd: fwd(params=None), "valid")
        add("forward: x a str", lambda fwd=fwd: fwd(x="x"))
        add("forward: x None", lambda fwd=fwd: fwd(x=None))
        if spec.float_input:
            add("forward: x of integers", lambda fwd=fwd, spec=spec: fwd(x=spec.x().astype(jnp.int32)))
            add("forward: x complex", lambda fwd=fwd, spec=spec: fwd(x=spec.x().astype(jnp.complex64)))
            add("forward: x of another dtype than the params (float16)",
                lambda fwd=fwd, spec=spec: fwd(x=spec.x().astype(jnp.float16)), "valid" if not has_params else "error")
            add("forward: x with an extra axis", lambda fwd=fwd, spec=spec: fwd(x=spec.x()[..., None]),
                "valid" if label in ("ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softplus", "GELU",
                                     "GELU(exact)", "sine", "Softmax", "Dropout", "Flatten") else "error")
            add("forward: a scalar x", lambda fwd=fwd: fwd(x=jnp.float32(1.0)))
            add("forward: x as a Python list", lambda fwd=fwd, spec=spec: fwd(x=np.asarray(spec.x()).tolist()))
        elif label == "Embedding":
            add("forward: float ids", lambda fwd=fwd, spec=spec: fwd(x=spec.x().astype(jnp.float32)))
            add("forward: an id equal to the vocabulary size", lambda fwd=fwd: fwd(x=jnp.array([[0, 1, 5], [1, 2, 3]])))
            add("forward: a negative id", lambda fwd=fwd: fwd(x=jnp.array([[0, -1, 2], [1, 2, 3]])))
            add("forward: bool ids", lambda fwd=fwd: fwd(x=jnp.ones((2, 3), bool)))
            add("forward: a scalar id", lambda fwd=fwd: fwd(x=jnp.int32(1)))
        else:
            add("forward: a 3-tuple input", lambda fwd=fwd, spec=spec: fwd(x=(*spec.x(), spec.x()[0])))
            add("forward: the first input alone", lambda fwd=fwd, spec=spec: fwd(x=spec.x()[0]))

        def bwd(dy, label=label):
            layer, p, _, _, c = _built(label)
            return layer.backward(p, c, dy)

        def y_of(label=label):
            return _built(label)[3]

        add("valid: backward", lambda bwd=bwd, y_of=y_of: bwd(jax.tree_util.tree_map(jnp.ones_like, y_of())), "valid")
        add("backward: dy with the last axis one longer",
            lambda bwd=bwd, y_of=y_of: bwd(jax.tree_util.tree_map(lambda v: jnp.ones((*v.shape[:-1], v.shape[-1] + 1), v.dtype),
                                                                  y_of())))
        add("backward: dy with an extra axis",
            lambda bwd=bwd, y_of=y_of: bwd(jax.tree_util.tree_map(lambda v: jnp.ones((*v.shape, 1), v.dtype), y_of())))
        add("backward: dy of float16 (y is float32)",
            lambda bwd=bwd, y_of=y_of: bwd(jax.tree_util.tree_map(lambda v: jnp.ones(v.shape, jnp.float16), y_of())))
        add("backward: dy of integers",
            lambda bwd=bwd, y_of=y_of: bwd(jax.tree_util.tree_map(lambda v: jnp.ones(v.shape, jnp.int32), y_of())))
        add("backward: dy None", lambda bwd=bwd: bwd(None))
        add("backward: dy a str", lambda bwd=bwd: bwd("dy"))
    return out


def hyperparameter_cases() -> list[Case]:
    _, jnp, _, mbp = _jax()
    bad = {
        "Dense": [lambda: mbp.Dense("3"), lambda: mbp.Dense(3.0), lambda: mbp.Dense(0), lambda: mbp.Dense(-2),
                  lambda: mbp.Dense(True), lambda: mbp.Dense(3, use_bias="no"), lambda: mbp.Dense(None)],
        "LeakyReLU": [lambda: mbp.LeakyReLU("a"), lambda: mbp.LeakyReLU(None), lambda: mbp.LeakyReLU(float("nan")),
                      lambda: mbp.LeakyReLU(True)],
        "GELU": [lambda: mbp.GELU(approximate="yes"), lambda: mbp.GELU(approximate=1)],
        "Elementwise": [lambda: mbp.Elementwise(3, jnp.cos), lambda: mbp.Elementwise(jnp.sin, None),
                        lambda: mbp.Elementwise(jnp.sin, jnp.cos, label=3)],
        "Softmax": [lambda: mbp.Softmax(axis=1.5), lambda: mbp.Softmax(axis="last")],
        "Conv2D": [lambda: mbp.Conv2D(2, "3x3"), lambda: mbp.Conv2D(2, (3, 3), stride=0), lambda: mbp.Conv2D(2, (3, 3.5)),
                   lambda: mbp.Conv2D(2, (3, 3), padding="FULL"), lambda: mbp.Conv2D(2, (3, 3), use_bias="no"),
                   lambda: mbp.Conv2D(0, (3, 3)), lambda: mbp.Conv2D(2, (3, 3), dilation=-1)],
        "Conv1D": [lambda: mbp.Conv1D(2, 0), lambda: mbp.Conv1D(2, 3, padding="FULL"), lambda: mbp.Conv1D(2, 3, stride=1.5),
                   lambda: mbp.Conv1D(2, 3, use_bias=None)],
        "ConvTranspose2D": [lambda: mbp.ConvTranspose2D(2, (2, 2), transpose_kernel="yes"),
                            lambda: mbp.ConvTranspose2D(2, (2, 2), stride=(1, 0)),
                            lambda: mbp.ConvTranspose2D(2, (2, 2), use_bias=1)],
        "MaxPool2D": [lambda: mbp.MaxPool2D(0), lambda: mbp.MaxPool2D("2"), lambda: mbp.MaxPool2D(2, padding="FULL"),
                      lambda: mbp.MaxPool2D(2, stride=-1)],
        "AvgPool2D": [lambda: mbp.AvgPool2D((2, 2, 2)), lambda: mbp.AvgPool2D(2.0)],
        "LayerNorm": [lambda: mbp.LayerNorm(0.0), lambda: mbp.LayerNorm(-1e-5), lambda: mbp.LayerNorm("small")],
        "BatchNorm": [lambda: mbp.BatchNorm(momentum=1.0), lambda: mbp.BatchNorm(momentum="fast"),
                      lambda: mbp.BatchNorm(epsilon=float("nan"))],
        "Dropout": [lambda: mbp.Dropout(1.0), lambda: mbp.Dropout(-0.1), lambda: mbp.Dropout("half"),
                    lambda: mbp.Dropout(0.5, training="yes"), lambda: mbp.Dropout(0.5, key=3),
                    lambda: mbp.Dropout(0.5, key=jnp.ones(2))],
        "Embedding": [lambda: mbp.Embedding(0, 4), lambda: mbp.Embedding(5, 4.0), lambda: mbp.Embedding("5", 4)],
        "PositionalEmbedding": [lambda: mbp.PositionalEmbedding(0, 4), lambda: mbp.PositionalEmbedding(8, None)],
        "RNN": [lambda: mbp.RNN(0), lambda: mbp.RNN(3, activation="tanh"), lambda: mbp.RNN(3, return_sequences="yes"),
                lambda: mbp.RNN(3, initial_state="random"), lambda: mbp.RNN(3, variable_length=1)],
        "LSTM": [lambda: mbp.LSTM(2.5), lambda: mbp.LSTM(3, initial_state=None)],
        "GRU": [lambda: mbp.GRU(-3), lambda: mbp.GRU(3, return_sequences=None)],
        "Bidirectional": [lambda: mbp.Bidirectional(mbp.Dense(3)), lambda: mbp.Bidirectional(3),
                          lambda: mbp.Bidirectional(mbp.GRU), lambda: mbp.Bidirectional(mbp.GRU(3), mbp.LSTM(3, return_sequences=False)),
                          lambda: mbp.Bidirectional(mbp.GRU(3, initial_state="given")),
                          lambda: mbp.Bidirectional(mbp.GRU(3), variable_length="yes"),
                          lambda: mbp.Bidirectional(mbp.ReLU())],
        "MultiHeadAttention": [lambda: mbp.MultiHeadAttention(0), lambda: mbp.MultiHeadAttention(2, head_dim=1.5),
                               lambda: mbp.MultiHeadAttention(2, causal="yes"),
                               lambda: mbp.MultiHeadAttention(2, causal=True, cross=True),
                               lambda: mbp.MultiHeadAttention(2, block_size=0)],
        "TransformerBlock": [lambda: mbp.TransformerBlock(5, 2), lambda: mbp.TransformerBlock(4, 0),
                             lambda: mbp.TransformerBlock(4, 2, dropout=1.5), lambda: mbp.TransformerBlock(4, 2, hidden=0),
                             lambda: mbp.TransformerBlock(4, 2, epsilon=-1.0), lambda: mbp.TransformerBlock("4", 2)],
        "Residual": [lambda: mbp.Residual(3), lambda: mbp.Residual(mbp.Dense), lambda: mbp.Residual(None)],
        "Sequential": [lambda: mbp.Sequential(3), lambda: mbp.Sequential(mbp.Dense(3), mbp.ReLU), lambda: mbp.Sequential(None),
                       lambda: mbp.Sequential(mbp.Dense(3), "relu")],
        "Parallel": [lambda: mbp.Parallel(), lambda: mbp.Parallel(3, mbp.Dense(2)), lambda: mbp.Parallel(mbp.Dense)],
    }
    return [Case("hyperparameter", who, f"bad hyperparameter #{i}", make) for who, makes in bad.items()
            for i, make in enumerate(makes)]


def size_cases() -> list[Case]:
    _, jnp, _, mbp = _jax()

    def init(layer, shape):
        return lambda: layer.init(_key(), shape, jnp.float32)

    return [
        Case("size", "Dense", "Dense(10**9) on 4 features (16 GB of W)", init(mbp.Dense(10**9), (4,))),
        Case("size", "Embedding", "Embedding(10**10, 16) (640 GB of E)", init(mbp.Embedding(10**10, 16), (3,))),
        Case("size", "Dense", "a (10**5, 10**5, 1) image flattened into Dense(10)",
             init(mbp.Sequential(mbp.Flatten(), mbp.Dense(10)), (10**5, 10**5, 1)), names=("Sequential",)),
        Case("size", "Conv2D", "Conv2D(10**6, (100, 100)) (40 TB of W)", init(mbp.Conv2D(10**6, (100, 100)), (8, 8, 10**3))),
        Case("size", "LSTM", "LSTM(10**6) (a 4e12-entry Wh)", init(mbp.LSTM(10**6), (5, 2))),
        Case("size", "value_and_grad", "a (1, 10**5, 10**5, 1) image through Conv2D (320 GB of activations), traced",
             lambda: _huge_activation("eval_shape")),
        Case("size", "value_and_grad", "a (1, 10**5, 10**5, 1) image through Conv2D, lowered ahead of time",
             lambda: _huge_activation("lower")),
        Case("size", "Dense", "valid: Dense(1000) on 1000 features (4 MB)", init(mbp.Dense(1000), (1000,)), "valid"),
    ]


def _huge_activation(how):
    """A model whose forward on a (1, 10**5, 10**5, 1) image keeps 320 GB, the image never made (abstract)."""
    jax, jnp, _, mbp = _jax()
    model = mbp.Sequential(mbp.Conv2D(8, (3, 3), padding="SAME"), mbp.GlobalAvgPool2D(), mbp.Dense(2))
    params, _ = model.init(_key(), (16, 16, 1))
    x = jax.ShapeDtypeStruct((1, 10**5, 10**5, 1), jnp.float32)
    f = mbp.value_and_grad(model, mbp.SoftmaxCrossEntropy())
    y = jnp.zeros((1,), jnp.int32)
    if how == "eval_shape":
        return jax.eval_shape(f, params, x, y)
    return jax.jit(f).lower(params, x, y)


# ------------------------------------------------------------------------------------------------------------- heads

def head_cases() -> list[Case]:
    jax, jnp, np, mbp = _jax()
    out = []
    z = lambda: _x((4, 3))  # noqa: E731
    heads = {"SoftmaxCrossEntropy": (mbp.SoftmaxCrossEntropy(), lambda: jnp.array([0, 1, 2, 1])),
             "SigmoidBinaryCrossEntropy": (mbp.SigmoidBinaryCrossEntropy(), lambda: jnp.ones((4, 3)) * 0.5),
             "MeanSquaredError": (mbp.MeanSquaredError(), lambda: _x((4, 3), seed=3))}
    for who, (head, labels) in heads.items():
        def add(what, run, expect="error", who=who):
            out.append(Case("head", who, what, run, expect))

        def fwd(logits=None, y=None, mask=None, head=head, labels=labels):
            return head.forward(z() if logits is None else logits, labels() if y is None else y, mask)

        add("valid: forward", lambda fwd=fwd: fwd(), "valid")
        add("valid: a mask of weights", lambda fwd=fwd: fwd(mask=jnp.array([1.0, 0.0, 2.0, 1.0])), "valid")
        add("valid: a bool mask", lambda fwd=fwd: fwd(mask=jnp.array([True, False, True, True])), "valid")
        add("logits a str", lambda fwd=fwd: fwd(logits="z"))
        add("logits of integers", lambda fwd=fwd: fwd(logits=jnp.zeros((4, 3), jnp.int32)))
        add("logits with no example (0, 3)", lambda fwd=fwd, labels=labels: fwd(logits=jnp.zeros((0, 3)), y=labels()[:0]))
        add("logits a scalar", lambda fwd=fwd: fwd(logits=jnp.float32(0)))
        add("labels a str", lambda fwd=fwd: fwd(y="cat"))
        add("labels None", lambda head=head: head.forward(z(), None))
        add("labels of another shape", lambda fwd=fwd: fwd(y=jnp.zeros((3,), jnp.int32)))
        add("labels complex", lambda fwd=fwd, labels=labels: fwd(y=labels().astype(jnp.complex64)))
        add("mask of another shape", lambda fwd=fwd: fwd(mask=jnp.ones((3,))))
        add("mask complex", lambda fwd=fwd: fwd(mask=jnp.array([1 + 1j, 1, 1, 1])))
        add("mask with a negative entry", lambda fwd=fwd: fwd(mask=jnp.array([1.0, -1.0, 1.0, 1.0])))
        add("mask all zeros", lambda fwd=fwd: fwd(mask=jnp.zeros(4)))
        add("mask holding NaN", lambda fwd=fwd: fwd(mask=jnp.array([1.0, np.nan, 1.0, 1.0])))
        add("mask a str", lambda fwd=fwd: fwd(mask="all"))
        add("under jax.jit a negative mask entry gives NaN",
            lambda head=head, labels=labels: jax.jit(lambda z, y, m, head=head: head.forward(z, y, m)[0])(
                z(), labels(), jnp.array([1.0, -1.0, 1.0, 1.0])), "nan")
        if who == "SoftmaxCrossEntropy":
            add("a label equal to the number of classes", lambda fwd=fwd: fwd(y=jnp.array([0, 1, 3, 1])))
            add("a label of -1", lambda fwd=fwd: fwd(y=jnp.array([0, -1, 2, 1])))
            add("float targets of the labels' shape", lambda fwd=fwd: fwd(y=jnp.array([0.0, 1.0, 2.0, 1.0])))
            add("float targets holding NaN", lambda fwd=fwd: fwd(y=jnp.full((4, 3), np.nan)))
            add("bool labels", lambda fwd=fwd: fwd(y=jnp.ones(4, bool)))
            add("valid: uint8 labels", lambda fwd=fwd: fwd(y=jnp.array([0, 1, 2, 1], jnp.uint8)), "valid")
            add("under jax.jit a label of 3 gives NaN",
                lambda head=head: jax.jit(lambda z, y, head=head: head.forward(z, y)[0])(z(), jnp.array([0, 1, 3, 1])),
                "nan")
        elif who == "SigmoidBinaryCrossEntropy":
            add("a label of 2", lambda fwd=fwd: fwd(y=jnp.full((4, 3), 2.0)))
            add("a label of NaN", lambda fwd=fwd: fwd(y=jnp.full((4, 3), np.nan)))
            add("under jax.jit a label of -1 gives NaN",
                lambda head=head: jax.jit(lambda z, y, head=head: head.forward(z, y)[0])(z(), jnp.full((4, 3), -1.0)),
                "nan")
        else:
            add("labels holding Inf", lambda fwd=fwd: fwd(y=jnp.full((4, 3), np.inf)))
            add("labels of integers", lambda fwd=fwd: fwd(y=jnp.zeros((4, 3), jnp.int32)))
    return out


# --------------------------------------------------------------------------------------------------------------- api

@cache
def _mlp():
    _, jnp, _, mbp = _jax()
    model = mbp.Sequential(mbp.Dense(3))
    params, _ = model.init(_key(), (4,))
    return model, mbp.SoftmaxCrossEntropy(), params, _x((4, 4)), jnp.array([0, 1, 2, 1])


@cache
def _emb():
    _, jnp, _, mbp = _jax()
    model = mbp.Sequential(mbp.Embedding(5, 4), mbp.Dense(3))
    params, _ = model.init(_key(), (3,))
    return model, mbp.SoftmaxCrossEntropy(), params, jnp.array([[0, 1, 2], [4, 3, 0]]), jnp.zeros((2, 3), jnp.int32)


@cache
def _seq(kind, bidirectional=False):
    """A variable-length recurrent model: (model, head, params, x, valid lengths, labels)."""
    _, jnp, _, mbp = _jax()
    cell = getattr(mbp, kind)(3, variable_length=True, return_sequences=False)
    layer = mbp.Bidirectional(cell) if bidirectional else cell
    model = mbp.Sequential(layer, mbp.Dense(2))
    params, _ = model.init(_key(), ((5, 2), ()))
    return model, mbp.SoftmaxCrossEntropy(), params, _x((2, 5, 2)), jnp.array([5, 2]), jnp.array([0, 1])


def api_cases() -> list[Case]:
    jax, jnp, np, mbp = _jax()
    out = []

    def add(who, what, run, expect="error", names=()):
        out.append(Case("api", who, what, run, expect, names))

    mlp = lambda: _mlp()  # noqa: E731
    sce, dense, emb = ("SoftmaxCrossEntropy",), ("Dense", "Sequential"), ("Embedding",)

    def vag(model=None, head=None, params=None, x=None, y=None, mask=None, **kw):
        m, h, p, x0, y0 = mlp()
        f = mbp.value_and_grad(m if model is None else model, h if head is None else head, **kw)
        return f(p if params is None else params, x0 if x is None else x, y0 if y is None else y, mask)

    def cmp(model=None, head=None, params=None, x=None, y=None, mask=None, fn=None, **kw):
        m, h, p, x0, y0 = mlp()
        fn = fn or (lambda *a, **k: mbp.compare(*a, **k).status)
        return fn(m if model is None else model, h if head is None else head, p if params is None else params,
                  x0 if x is None else x, y0 if y is None else y, mask, **kw)

    def grc(**kw):
        return cmp(fn=lambda *a, **k: mbp.gradcheck(*a, **k).status, **kw)

    checkers = {"value_and_grad": vag, "compare": cmp, "gradcheck": grc}
    for who, f in checkers.items():
        add(who, "valid: a call", lambda f=f: f(), "valid")
        add(who, "model 3 (an int)", lambda f=f: f(model=3))
        add(who, "model the class Dense, not an instance", lambda f=f: f(model=mbp.Dense))
        add(who, "model a str", lambda f=f: f(model="model"))
        add(who, "head a str", lambda f=f: f(head="head"))
        add(who, "head a layer (Dense) with no loss", lambda f=f: f(head=mbp.Dense(3)))
        add(who, "head the class SoftmaxCrossEntropy", lambda f=f: f(head=mbp.SoftmaxCrossEntropy))
        add(who, "a label equal to the number of classes", lambda f=f: f(y=jnp.array([3, 1, 2, 1])), names=sce)
        add(who, "a label of -1", lambda f=f: f(y=jnp.array([-1, 1, 2, 1])), names=sce)
        add(who, "an all-zero mask", lambda f=f: f(mask=jnp.zeros(4)), names=sce)
        add(who, "a complex mask", lambda f=f: f(mask=jnp.ones(4, jnp.complex64)), names=sce)
        add(who, "a negative mask entry", lambda f=f: f(mask=jnp.array([1.0, -1.0, 1.0, 1.0])), names=sce)
        add(who, "labels of another batch", lambda f=f: f(y=jnp.array([0, 1])), names=sce)
        add(who, "x holding NaN", lambda f=f: f(x=jnp.full((4, 4), np.nan)), names=("Sequential",))
        add(who, "params holding Inf", lambda f=f: f(params=jax.tree_util.tree_map(lambda v: v + np.inf, mlp()[2])),
            names=("Sequential",))
        add(who, "params of another tree", lambda f=f: f(params=({"W": jnp.zeros((4, 3))},)), names=dense)
        add(who, "params a str", lambda f=f: f(params="params"), names=dense)
        add(who, "x of another width", lambda f=f: f(x=_x((4, 5))), names=dense)
        add(who, "x a str", lambda f=f: f(x="x"))
        add(who, "an Embedding id equal to the vocabulary",
            lambda f=f: f(model=_emb()[0], params=_emb()[2], x=jnp.array([[0, 1, 5], [1, 2, 3]]), y=_emb()[4]), names=emb)
        add(who, "a negative Embedding id",
            lambda f=f: f(model=_emb()[0], params=_emb()[2], x=jnp.array([[0, -1, 2], [1, 2, 3]]), y=_emb()[4]), names=emb)
        for kind in ("RNN", "LSTM", "GRU"):
            for bi in (False, True):
                tag = f"{'Bidirectional ' if bi else ''}{kind}"
                for lengths, what in (([9, 2], "a length above T"), ([-3, 2], "a negative length"),
                                      ([5, 6], "a length of T + 1")):
                    add(who, f"{tag}: {what} {lengths}",
                        lambda f=f, kind=kind, bi=bi, lengths=lengths: f(
                            model=_seq(kind, bi)[0], params=_seq(kind, bi)[2],
                            x=(_seq(kind, bi)[3], jnp.array(lengths)), y=_seq(kind, bi)[5]), names=(kind,))
                add(who, f"valid: {tag}: lengths [0, 5]",
                    lambda f=f, kind=kind, bi=bi: f(model=_seq(kind, bi)[0], params=_seq(kind, bi)[2],
                                                   x=(_seq(kind, bi)[3], jnp.array([0, 5])), y=_seq(kind, bi)[5]),
                    "valid")
                add(who, f"{tag}: float lengths",
                    lambda f=f, kind=kind, bi=bi: f(model=_seq(kind, bi)[0], params=_seq(kind, bi)[2],
                                                   x=(_seq(kind, bi)[3], jnp.array([5.0, 2.0])), y=_seq(kind, bi)[5]),
                    names=(kind,))
    add("value_and_grad", "jit='yes' (not a bool)", lambda: vag(jit="yes"))
    add("value_and_grad", "check=None", lambda: vag(check=None))
    add("compare", "verdict='strict'", lambda: cmp(verdict="strict"))
    add("compare", "jit='no'", lambda: cmp(jit="no"))
    add("compare", "title 3 (not a str)", lambda: cmp(title=3))
    add("gradcheck", "k=2.5", lambda: grc(k=2.5))
    add("gradcheck", "k=0", lambda: grc(k=0))
    add("gradcheck", "k=True", lambda: grc(k=True))
    add("gradcheck", "mode='all'", lambda: grc(mode="all"))
    add("gradcheck", "eps=-1", lambda: grc(eps=-1.0))
    add("gradcheck", "eps='small'", lambda: grc(eps="small"))
    add("gradcheck", "eps=nan", lambda: grc(eps=float("nan")))
    add("gradcheck", "key=3 (an int)", lambda: grc(key=3))
    add("gradcheck", "valid: key a raw uint32[2] key", lambda: grc(key=jax.random.PRNGKey(1)), "valid")
    add("gradcheck", "max_params=1.5", lambda: grc(mode="exhaustive", max_params=1.5))

    # user's own jit: invalid values give NaN; a captured constant of valid lengths is checked, not traced
    for kind in ("RNN", "LSTM", "GRU"):
        for bi in (False, True):
            tag = f"{'Bidirectional ' if bi else ''}{kind}"

            def jitted(lengths, kind=kind, bi=bi):
                model, head, params, x, _, y = _seq(kind, bi)
                return jax.jit(lambda p, x, lengths: mbp.value_and_grad(model, head)(p, (x, lengths), y)[0])(
                    params, x, jnp.array(lengths))

            def captured(lengths, kind=kind, bi=bi):
                model, head, params, x, _, y = _seq(kind, bi)
                L = jnp.array(lengths)
                return jax.jit(lambda p, x: mbp.value_and_grad(model, head)(p, (x, L), y)[0])(params, x)

            add("value_and_grad", f"{tag}: under jax.jit a length above T gives NaN", lambda j=jitted: j([9, 2]), "nan")
            add("value_and_grad", f"{tag}: under jax.jit a negative length gives NaN", lambda j=jitted: j([-1, 2]), "nan")
            add("value_and_grad", f"valid: {tag}: under jax.jit valid lengths captured as a constant",
                lambda c=captured: c([5, 2]), "valid")
            add("value_and_grad", f"{tag}: under jax.jit invalid lengths captured as a constant",
                lambda c=captured: c([7, 2]), names=(kind,))
    add("value_and_grad", "under jax.jit a label of 3 gives NaN",
        lambda: jax.jit(mbp.value_and_grad(*mlp()[:2]))(mlp()[2], mlp()[3], jnp.array([3, 1, 2, 1]))[0], "nan")

    # check_layer
    d, pd = mbp.Dense(3), mbp.Dense(3).init(_key(), (4,))[0]

    def chl(layer=None, params=None, x=None, dy=None, **kw):
        return mbp.check_layer(d if layer is None else layer, pd if params is None else params,
                               _x((2, 4)) if x is None else x, dy, **kw).status

    add("check_layer", "valid: a call", lambda: chl(), "valid")
    add("check_layer", "layer 3", lambda: chl(layer=3))
    add("check_layer", "layer the class Dense", lambda: chl(layer=mbp.Dense))
    add("check_layer", "reference 3 (not a function)", lambda: chl(reference=3))
    add("check_layer", "reference returning another shape", lambda: chl(reference=lambda p, x: x))
    add("check_layer", "dy of another shape", lambda: chl(dy=jnp.ones((2, 4))))
    add("check_layer", "dy of float16", lambda: chl(dy=jnp.ones((2, 3), jnp.float16)))
    add("check_layer", "dy holding NaN", lambda: chl(dy=jnp.full((2, 3), np.nan)), names=("Dense",))
    add("check_layer", "key=3", lambda: chl(key=3))
    add("check_layer", "verdict='strict'", lambda: chl(verdict="strict"))
    add("check_layer", "x of integers", lambda: chl(x=jnp.ones((2, 4), jnp.int32)), names=("Dense",))
    add("check_layer", "params of another shape", lambda: chl(params={"W": jnp.zeros((5, 3)), "b": jnp.zeros(3)}),
        names=("Dense",))

    # check_vjp
    def cvj(fn=jnp.sin, reference=jnp.sin, *args, **kw):
        return mbp.check_vjp(fn, reference, *(args or (_x((3,)),)), **kw).status

    add("check_vjp", "valid: a call", lambda: cvj(), "valid")
    add("check_vjp", "fn 3 (not a function)", lambda: cvj(3))
    add("check_vjp", "valid: reference None (finite differences)", lambda: cvj(jnp.sin, None), "valid")
    add("check_vjp", "reference 3", lambda: cvj(jnp.sin, 3))
    add("check_vjp", "an input of shape (0, 3): nothing to compare", lambda: cvj(jnp.sin, jnp.sin, jnp.ones((0, 3))),
        "inconclusive")
    add("check_vjp", "k=0", lambda: cvj(k=0))
    add("check_vjp", "k=1.5", lambda: cvj(k=1.5))
    add("check_vjp", "an integer input only", lambda: cvj(jnp.sin, jnp.sin, jnp.ones(3, jnp.int32)))
    add("check_vjp", "argnums 5", lambda: cvj(argnums=5))
    add("check_vjp", "an input holding NaN", lambda: cvj(jnp.sin, jnp.sin, jnp.full(3, np.nan)))
    add("check_vjp", "a reference of another output shape", lambda: cvj(jnp.sin, lambda x: x[:2]))

    # as_function
    def asf(layer, x=None):
        f = mbp.as_function(layer)
        return f(pd, _x((2, 4)) if x is None else x)

    add("as_function", "valid: Dense", lambda: asf(d), "valid")
    add("as_function", "3 (not a layer)", lambda: mbp.as_function(3))
    add("as_function", "the class Dense", lambda: mbp.as_function(mbp.Dense))
    add("as_function", "None", lambda: mbp.as_function(None))
    add("as_function", "a function, not a layer", lambda: mbp.as_function(jnp.sin))
    add("Dense", "as_function(Dense) called on x of another width", lambda: asf(d, _x((2, 5))))
    add("as_function", "valid: jax.grad through it",
        lambda: jax.grad(lambda p: mbp.as_function(d)(p, _x((2, 4))).sum())(pd), "valid")

    # register_reference
    class Scale(mbp.Layer):
        pass

    add("register_reference", "int as the layer type", lambda: mbp.register_reference(int, lambda l, p, x: x))
    add("register_reference", "an instance, not a type", lambda: mbp.register_reference(d, lambda l, p, x: x))
    add("register_reference", "fn 3", lambda: mbp.register_reference(Scale, 3))
    add("register_reference", "fn taking one argument", lambda: mbp.register_reference(Scale, lambda x: x))
    add("register_reference", "manualbp's own Dense", lambda: mbp.register_reference(mbp.Dense, lambda l, p, x: x))
    add("register_reference", "a class with no forward/backward", lambda: mbp.register_reference(type("Plain", (), {}),
                                                                                                 lambda l, p, x: x))

    # dropout keys, containers
    model = mbp.Sequential(mbp.Dense(3), mbp.Dropout(0.5))
    add("with_dropout_key", "model 3", lambda: mbp.with_dropout_key(3, _key()))
    add("with_dropout_key", "key 3", lambda: mbp.with_dropout_key(model, 3))
    add("with_dropout_key", "key a str", lambda: mbp.with_dropout_key(model, "k"))
    add("with_dropout_key", "valid: a raw uint32[2] key", lambda: mbp.with_dropout_key(model, jax.random.PRNGKey(0)), "valid")
    add("without_dropout", "model 3", lambda: mbp.without_dropout(3))
    add("Dropout", "training without a key", lambda: mbp.Dropout(0.5).forward({}, _x((2, 3))))
    add("tolerance", "dtype int32", lambda: mbp.tolerance(jnp.int32))
    add("tolerance", "dtype 'banana'", lambda: mbp.tolerance("banana"))

    # gradient_flow
    def flow(**kw):
        m, h, p, x, y = mlp()
        args = dict(model=m, head=h, params=p, x=x, y=y)
        args.update(kw)
        return mbp.gradient_flow(args.pop("model"), args.pop("head"), args.pop("params"), args.pop("x"), args.pop("y"),
                                 **args)

    add("gradient_flow", "valid: a call", lambda: flow(), "valid")
    add("gradient_flow", "model 3", lambda: flow(model=3))
    add("gradient_flow", "head None", lambda: flow(head=None))
    add("gradient_flow", "a label equal to the number of classes", lambda: flow(y=jnp.array([3, 1, 2, 1])), names=sce)
    add("gradient_flow", "lr='big'", lambda: flow(lr="big"))

    # a layer's other methods
    bn, pb = mbp.BatchNorm(), mbp.BatchNorm().init(_key(), (3,))[0]
    add("BatchNorm", "forward_eval with a negative running variance",
        lambda: bn.forward_eval(pb, {"mean": jnp.zeros(3), "var": -jnp.ones(3)}, _x((2, 3))))
    add("BatchNorm", "forward_eval with running statistics of another width",
        lambda: bn.forward_eval(pb, {"mean": jnp.zeros(4), "var": jnp.ones(4)}, _x((2, 3))))
    add("BatchNorm", "forward_eval with NaN in the running mean",
        lambda: bn.forward_eval(pb, {"mean": jnp.full(3, np.nan), "var": jnp.ones(3)}, _x((2, 3))))
    add("BatchNorm", "valid: forward_eval", lambda: bn.forward_eval(pb, bn.init_stats((3,)), _x((2, 3))), "valid")
    sine_bad = mbp.Elementwise(jnp.sin, lambda x: jnp.cos(x).sum(), label="sine")
    add("sine", "an Elementwise derivative of another shape (a scalar)",
        lambda: sine_bad.backward({}, sine_bad.forward({}, _x((2, 3)))[1], jnp.ones((2, 3))))
    sine_int = mbp.Elementwise(jnp.sin, lambda x: jnp.ones(x.shape, jnp.int32), label="sine")
    add("sine", "an Elementwise derivative of integers",
        lambda: sine_int.backward({}, sine_int.forward({}, _x((2, 3)))[1], jnp.ones((2, 3))))
    sine_fn = mbp.Elementwise(lambda x: x.sum(), jnp.cos, label="sine")
    add("sine", "an Elementwise fn that changes the shape", lambda: sine_fn.forward({}, _x((2, 3))))
    mha, pm = mbp.MultiHeadAttention(2), mbp.MultiHeadAttention(2).init(_key(), (3, 4))[0]
    add("MultiHeadAttention", "an empty batch (0, 3, 4)", lambda: mha.forward(pm, jnp.zeros((0, 3, 4))))
    add("MultiHeadAttention", "a key mask of floats",
        lambda: mbp.MultiHeadAttention(2, key_mask=True).forward(pm, (_x((2, 3, 4)), jnp.ones((2, 3)))))
    return out


# ------------------------------------------------------------------------------------------------------------- train

def train_cases() -> list[Case]:
    jax, jnp, np, mbp = _jax()
    from manualbp.training.data import Dataset

    def data(x_train=None, y_train=None, task="classification"):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((16, 4)).astype(np.float32) if x_train is None else x_train
        y = rng.integers(0, 3, 16).astype(np.int32) if y_train is None else y_train
        return Dataset("toy", x, y, x[:4], y[:4], task, 3)

    def train(**kw):
        m, h, p, _, _ = _mlp()
        args = dict(model=m, head=h, params=p, data=data(), steps=2, batch_size=4, key=_key())
        args.update(kw)
        return mbp.train(args.pop("model"), args.pop("head"), args.pop("params"), args.pop("data"), **args)

    def nan_at(i, j):
        x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
        x[i, j] = np.nan
        return x

    out = []

    def add(what, run, expect="error", who="train", names=()):
        out.append(Case("train", who, what, run, expect, names))

    add("valid: two steps", lambda: train(), "valid")
    add("model 3", lambda: train(model=3))
    add("head None", lambda: train(head=None))
    add("data a tuple, not a Dataset", lambda: train(data=(np.zeros((8, 4)), np.zeros(8))))
    add("steps 0", lambda: train(steps=0))
    add("steps 1.5", lambda: train(steps=1.5))
    add("steps True", lambda: train(steps=True))
    add("batch_size True", lambda: train(batch_size=True))
    add("batch_size 0", lambda: train(batch_size=0))
    add("batch_size 2.0", lambda: train(batch_size=2.0))
    add("batch_size above the data", lambda: train(batch_size=17))
    add("grad 'autodiff'", lambda: train(grad="autodiff"))
    add("key 3", lambda: train(key=3))
    add("key None", lambda: train(key=None))
    add("optimizer 3", lambda: train(optimizer=3))
    add("log_every -1", lambda: train(log_every=-1))
    add("log_every 1.5", lambda: train(log_every=1.5))
    add("on_log 3", lambda: train(on_log=3, log_every=1))
    add("checkpoint_every -1", lambda: train(checkpoint_every=-1))
    add("x_train holding NaN", lambda: train(data=data(x_train=nan_at(5, 2))))
    add("x_train holding Inf", lambda: train(data=data(x_train=nan_at(0, 0) * 0 + np.inf)))
    add("labels out of range", lambda: train(data=data(y_train=np.full(16, 7, np.int32))))
    add("negative labels", lambda: train(data=data(y_train=np.full(16, -1, np.int32))))
    add("params of another tree", lambda: train(params=({"W": jnp.zeros((4, 3))},)), names=("Dense", "Sequential"))
    add("params holding NaN", lambda: train(params=jax.tree_util.tree_map(lambda v: v * np.nan, _mlp()[2])))
    # a CheckpointError names the checkpoint (its path), which is what is wrong
    add("checkpoint a file", lambda: train(checkpoint=__file__), names=("checkpoint",))
    add("resume with no checkpoint", lambda: train(checkpoint=tempfile.mkdtemp(), resume=True), names=("checkpoint",))
    add("twin: model 3", lambda: mbp.train_twin(3, _mlp()[1], _mlp()[2], data(), steps=2, batch_size=4, key=_key()),
        who="train_twin")
    add("twin: batch_size True", lambda: mbp.train_twin(*_mlp()[:3], data(), steps=2, batch_size=True, key=_key()),
        who="train_twin")
    add("twin: x_train holding NaN", lambda: mbp.train_twin(*_mlp()[:3], data(x_train=nan_at(1, 1)), steps=2,
                                                           batch_size=4, key=_key()), who="train_twin")
    add("valid: clip_by_global_norm(1.0)", lambda: mbp.clip_by_global_norm(1.0), "valid", who="clip_by_global_norm")
    add("clip_by_global_norm(-1)", lambda: mbp.clip_by_global_norm(-1.0), who="clip_by_global_norm")
    add("clip_by_global_norm('big')", lambda: mbp.clip_by_global_norm("big"), who="clip_by_global_norm")
    return out


# ------------------------------------------------------------------------------------------------------------- files

def file_cases() -> list[Case]:
    """A short run's checkpoint directory, damaged in one way each; resuming must refuse it."""
    _, _, np, mbp = _jax()

    def damaged(fn, name):
        def run():
            from manualbp.training.data import Dataset

            rng = np.random.default_rng(0)
            x = rng.standard_normal((16, 4)).astype(np.float32)
            y = rng.integers(0, 3, 16).astype(np.int32)
            data = Dataset("toy", x, y, x[:4], y[:4], "classification", 3)
            m, h, p, _, _ = _mlp()
            with tempfile.TemporaryDirectory() as d:
                mbp.train(m, h, p, data, steps=4, batch_size=4, key=_key(), checkpoint=d, checkpoint_every=2)
                path = os.path.join(d, name)
                blob = bytearray(Path(path).read_bytes())
                Path(path).write_bytes(bytes(fn(blob)))
                return mbp.train(m, h, p, data, steps=6, batch_size=4, key=_key(), checkpoint=d, resume=True)
        return run

    def flip(offset):
        def f(blob):
            blob[offset % len(blob)] ^= 0x10
            return blob
        return f

    cases = []
    for name in ("history.log", "checkpoint.npz"):
        cases.append(Case("files", "checkpoint", f"{name} truncated to half", damaged(lambda b: b[: len(b) // 2], name)))
        cases.append(Case("files", "checkpoint", f"{name} emptied", damaged(lambda b: b[:0], name)))
        for offset in (0, 9, 50, 70, -1, -9):
            cases.append(Case("files", "checkpoint", f"{name}: a bit flipped at byte {offset}", damaged(flip(offset), name)))
    return cases


# --------------------------------------------------------------------------------------------------------------- cli

def cli_cases() -> list[Case]:
    def cli(*argv):
        return lambda: _run_cli(list(argv))

    bad = [
        ("manualbp", []), ("manualbp", ["frobnicate"]),
        ("manualbp check", ["check", "--model", "nope"]), ("manualbp check", ["check", "--dtype", "int8"]),
        ("manualbp check", ["check", "--batch-size", "0"]), ("manualbp check", ["check", "--batch-size", "x"]),
        ("manualbp check", ["check", "--seed", "x"]), ("manualbp check", ["check", "--verdict", "nope"]),
        ("manualbp check", ["check", "--dtype", "float64", "--verdict", "error-model", "--model", "mlp"]),
        ("manualbp train", ["train"]), ("manualbp train", ["train", "--model", "nope", "--data", "digits"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "nope"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--steps", "0"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--lr", "-1"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--lr", "nan"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--resume"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--checkpoint-every", "0"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--seed", "-1"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--devices", "0"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "sort"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--checkpoint", "/proc/none/x", "--steps", "1"]),
        ("manualbp train", ["train", "--model", "mlp", "--data", "digits", "--plot", "/proc/none/x.png", "--steps", "1"]),
        ("manualbp bench", ["bench", "--model", "nope"]), ("manualbp bench", ["bench", "--repeats", "0"]),
    ]
    out = [Case("cli", who, " ".join(argv) or "(no arguments)", cli(*argv)) for who, argv in bad]
    for argv in (["--help"], ["check", "--help"], ["train", "--help"], ["bench", "--help"]):
        out.append(Case("cli", "manualbp", "valid: " + " ".join(argv), cli(*argv), "valid"))
    return out


class CliExit(Exception):
    """The CLI exited with a status and printed ``text``."""

    def __init__(self, status, text):
        super().__init__(text)
        self.status, self.text = status, text


def _run_cli(argv):
    """``manualbp <argv>`` in this process: its exit status and what it printed, a traceback escaping as itself."""
    from manualbp.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 2
    if status not in (0, None):
        raise CliExit(status, buf.getvalue())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- classification

def all_cases() -> list[Case]:
    return (layer_cases() + hyperparameter_cases() + size_cases() + head_cases() + api_cases() + train_cases()
            + file_cases() + cli_cases())


_OURS = (str(ROOT / "manualbp"), str(ROOT / "reference"))


def _raised_by_us(e: BaseException) -> bool:
    """Whether the innermost frame of the exception's traceback is manualbp's (or reference's) own code."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_OURS)


def classify(case: Case) -> tuple[str, str]:
    """(outcome, detail) of running ``case``: clear, handled, cryptic, silent, refused."""
    import numpy as np

    try:
        result = case.run()
    except CliExit as e:
        text = e.text.strip().splitlines()
        last = text[-1] if text else ""
        if case.expect == "error" and e.status == 2 and "Traceback" not in e.text and (
                "manualbp" in e.text or "error:" in e.text):
            return "clear", last
        return ("refused" if case.expect != "error" else "cryptic"), f"exit {e.status}: {last}"
    except Exception as e:  # noqa: BLE001 (the point is to see every kind)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        from manualbp.training.checkpoint import CheckpointError

        ours = isinstance(e, (ValueError, TypeError, NotImplementedError, CheckpointError)) and _raised_by_us(e)
        named = any(name in str(e) for name in (case.who, *case.names))
        if case.expect != "error":
            return "refused" if ours and named else "cryptic", msg
        return ("clear" if ours and named else "cryptic"), msg
    if case.expect == "error":
        return "silent", f"returned {str(result)[:120]!r}"
    if case.expect == "nan":
        value = float(np.asarray(result))
        return ("handled", "NaN") if np.isnan(value) else ("silent", f"a plausible number {value}")
    if case.expect == "inconclusive":
        return ("handled", result) if result == "INCONCLUSIVE" else ("silent", f"status {result}")
    return "handled", "ran"


# ------------------------------------------------------------------------------------------------------------ runner

def _worker(start: int, every: int):
    """Run cases start, start + every, ... printing one JSON line each (a ``start`` line before it runs)."""
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    cases = all_cases()
    for i in range(start, len(cases), every):
        print(json.dumps({"start": i}), flush=True)
        t = time.perf_counter()
        outcome, detail = classify(cases[i])
        print(json.dumps({"i": i, "outcome": outcome, "detail": str(detail)[:300],
                          "s": round(time.perf_counter() - t, 3)}), flush=True)


def run(every: int = 1, verbose: bool = False) -> list[dict]:
    """Every ``every``-th case, in a worker process restarted after a case that kills it; one dict per case."""
    names = [c.name for c in all_cases()]
    results, start = {}, 0
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    while start < len(names):
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(start), "--every", str(every)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        current = None
        for line in proc.stdout:
            rec = json.loads(line)
            if "start" in rec:
                current = rec["start"]
                continue
            results[rec["i"]] = rec
            if verbose:
                print(f"{rec['outcome']:8s} {names[rec['i']]}: {rec['detail']}", flush=True)
        proc.wait()
        if current is None or current in results:
            break
        results[current] = {"i": current, "outcome": "crash", "detail": f"the process died (status {proc.returncode})"}
        if verbose:
            print(f"crash    {names[current]}", flush=True)
        start = current + every
    return [dict(results[i], name=names[i]) for i in sorted(results)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--every", type=int, default=1, help="run one case in N")
    p.add_argument("--json", metavar="OUT", help="write every case's outcome to OUT")
    p.add_argument("--verbose", action="store_true", help="print every case as it runs")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return _worker(args.worker, args.every)
    t = time.perf_counter()
    rows = run(args.every, args.verbose)
    counts = Counter(r["outcome"] for r in rows)
    bad = [r for r in rows if r["outcome"] in ("cryptic", "silent", "refused", "crash")]
    for r in bad:
        print(f"{r['outcome']:8s} {r['name']}: {r['detail']}")
    groups = Counter(r["name"].split(":")[0] for r in rows)
    print(f"{len(rows)} cases ({', '.join(f'{g} {n}' for g, n in groups.items())}) in {time.perf_counter() - t:.0f} s: "
          + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("clear", "handled", "cryptic", "silent", "refused", "crash")))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
