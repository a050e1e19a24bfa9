"""manualbp: backpropagation written out by hand in JAX, proven against jax.grad.

Layers (forward AND hand-written backward) and heads live in ``manualbp.layers``;
the tools that compare them with the autodiff twin in ``reference`` live in
``manualbp.verify``; training in ``manualbp.training``; the command line in
``manualbp.cli``.

The names below are imported on first use (PEP 562): ``import manualbp`` alone
imports no jax, so that ``manualbp --help`` answers at once.
"""

from __future__ import annotations

import importlib

_LAYERS = (
    "GELU", "GRU", "LSTM", "RNN", "Add", "AvgPool2D", "BatchNorm", "Bidirectional", "Conv1D", "Conv2D",
    "ConvTranspose2D", "Dense", "Dropout", "Elementwise", "Embedding", "Flatten", "GlobalAvgPool2D", "GlobalMaxPool2D",
    "Identity", "Layer", "LayerNorm", "LeakyReLU", "MaxPool2D", "MeanSquaredError", "MultiHeadAttention", "Multiply",
    "Parallel", "PositionalEmbedding", "ReLU", "Residual", "Sequential", "Sigmoid", "SigmoidBinaryCrossEntropy",
    "Softmax", "SoftmaxCrossEntropy", "Softplus", "Tanh", "TransformerBlock", "with_dropout_key", "without_dropout",
    # tensor parallelism (docs/parallel.md)
    "ColumnParallelDense", "FSDPDense", "ParallelAttention", "RowParallelDense", "parallel_block", "parallel_mlp",
)
# name -> the module that defines it ("data" is the module itself)
_WHERE = {
    **dict.fromkeys(_LAYERS, "manualbp.layers"),
    "value_and_grad": "manualbp.backprop",
    "as_function": "manualbp.bridge",
    "checkify_values": "manualbp.layers.base",
    "data": "manualbp.training.data",
    "clip_by_global_norm": "manualbp.training.clip",
    "train": "manualbp.training.train",
    "train_twin": "manualbp.training.train",
    "check_layer": "manualbp.verify.check_layer",
    "check_vjp": "manualbp.verify.check_vjp",
    "compare": "manualbp.verify.compare",
    "GradientFlow": "manualbp.verify.diagnostics",
    "gradient_flow": "manualbp.verify.diagnostics",
    "gradcheck": "manualbp.verify.gradcheck",
    "register_reference": "manualbp.verify.register",
    "Report": "manualbp.verify.report",
    "Row": "manualbp.verify.report",
    "Tolerance": "manualbp.verify.tolerances",
    "tolerance": "manualbp.verify.tolerances",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:  # a subpackage or module (``mbp.reference``, ``mbp.layers``), imported on first use
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'manualbp' has no attribute {name!r}") from None
        globals()[name] = value
        return value
    module = importlib.import_module(_WHERE[name])
    value = module if name == "data" else getattr(module, name)
    globals()[name] = value  # once: the next access does not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
