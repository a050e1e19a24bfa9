"""manualbp: backpropagation written out by hand in JAX, proven against jax.grad.

Layers (forward AND hand-written backward), heads, and the tools that
compare them with the autodiff twin in ``reference``.
"""

from manualbp.activations import GELU, Elementwise, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from manualbp.backprop import value_and_grad
from manualbp.conv import Conv2D
from manualbp.dense import Dense
from manualbp.diagnostics import GradientFlow, gradient_flow
from manualbp.embedding import Embedding
from manualbp.gradcheck import gradcheck
from manualbp.layer import Layer
from manualbp.losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from manualbp.nodes import Add, Multiply
from manualbp.norm import BatchNorm, LayerNorm
from manualbp.pool import AvgPool2D, MaxPool2D
from manualbp.recurrent import LSTM, RNN
from manualbp.report import Report, Row
from manualbp.reshape import Flatten
from manualbp.residual import Residual
from manualbp.sequential import Parallel, Sequential
from manualbp.tolerances import Tolerance, tolerance

# the comparison tools import the reference, which registers rules for the layers above
from manualbp.compare import check_layer, compare  # noqa: E402  isort: skip
from manualbp.train import train, train_twin  # noqa: E402  isort: skip
from manualbp.clip import clip_by_global_norm  # noqa: E402  isort: skip

__all__ = [
    "GELU", "Add", "Dense", "Elementwise", "Identity", "Layer", "LeakyReLU", "MeanSquaredError",
    "Multiply", "Parallel", "ReLU", "Report", "Row", "Sequential", "Sigmoid", "SigmoidBinaryCrossEntropy",
    "Softplus", "SoftmaxCrossEntropy", "Tanh", "Tolerance", "check_layer", "compare", "gradcheck", "tolerance",
    "value_and_grad",
    "BatchNorm", "GradientFlow", "LayerNorm", "Residual", "gradient_flow",
    "Embedding", "LSTM", "RNN",
    "AvgPool2D", "Conv2D", "Flatten", "MaxPool2D",
    "clip_by_global_norm", "train", "train_twin",
]
