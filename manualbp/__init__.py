"""manualbp: backpropagation written out by hand in JAX, proven against jax.grad.

Layers (forward AND hand-written backward) and heads live in ``manualbp.layers``;
the tools that compare them with the autodiff twin in ``reference`` live in
``manualbp.verify``; training in ``manualbp.training``; the command line in
``manualbp.cli``.
"""

from manualbp.backprop import value_and_grad
from manualbp.bridge import as_function
from manualbp.layers import (
    GELU,
    GRU,
    LSTM,
    RNN,
    Add,
    AvgPool2D,
    BatchNorm,
    Bidirectional,
    ColumnParallelDense,
    Conv1D,
    Conv2D,
    ConvTranspose2D,
    Dense,
    Dropout,
    Elementwise,
    Embedding,
    Flatten,
    FSDPDense,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    Identity,
    Layer,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    MeanSquaredError,
    MultiHeadAttention,
    Multiply,
    Parallel,
    ParallelAttention,
    PositionalEmbedding,
    ReLU,
    Residual,
    RowParallelDense,
    Sequential,
    Sigmoid,
    SigmoidBinaryCrossEntropy,
    Softmax,
    SoftmaxCrossEntropy,
    Softplus,
    Tanh,
    TransformerBlock,
    parallel_block,
    parallel_mlp,
    with_dropout_key,
    without_dropout,
)
from manualbp.layers.base import checkify_values
from manualbp.training import data
from manualbp.training.clip import clip_by_global_norm
from manualbp.training.train import train, train_twin
from manualbp.verify.check_layer import check_layer
from manualbp.verify.check_vjp import check_vjp
from manualbp.verify.compare import compare
from manualbp.verify.diagnostics import GradientFlow, gradient_flow
from manualbp.verify.gradcheck import gradcheck
from manualbp.verify.register import register_reference
from manualbp.verify.report import Report, Row
from manualbp.verify.tolerances import Tolerance, tolerance

__all__ = [
    "Add", "AvgPool2D", "BatchNorm", "Bidirectional", "ColumnParallelDense", "Conv1D", "Conv2D", "ConvTranspose2D",
    "Dense", "Dropout", "Elementwise", "Embedding", "FSDPDense", "Flatten", "GELU", "GRU", "GlobalAvgPool2D",
    "GlobalMaxPool2D", "GradientFlow", "Identity", "LSTM", "Layer", "LayerNorm", "LeakyReLU", "MaxPool2D",
    "MeanSquaredError", "MultiHeadAttention", "Multiply", "Parallel", "ParallelAttention", "PositionalEmbedding",
    "RNN", "ReLU", "Report", "Residual", "Row", "RowParallelDense", "Sequential", "Sigmoid",
    "SigmoidBinaryCrossEntropy", "Softmax", "SoftmaxCrossEntropy", "Softplus", "Tanh", "Tolerance",
    "TransformerBlock", "as_function", "check_layer", "check_vjp", "checkify_values", "clip_by_global_norm",
    "compare", "data", "gradcheck", "gradient_flow", "parallel_block", "parallel_mlp", "register_reference",
    "tolerance", "train", "train_twin", "value_and_grad", "with_dropout_key", "without_dropout"
]
