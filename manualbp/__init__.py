"""manualbp: backpropagation written out by hand in JAX, proven against jax.grad.

Layers (forward AND hand-written backward), heads, and the tools that
compare them with the autodiff twin in ``reference``.
"""

from manualbp.activations import GELU, Elementwise, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from manualbp.backprop import value_and_grad
from manualbp.dense import Dense
from manualbp.gradcheck import gradcheck
from manualbp.layer import Layer
from manualbp.losses import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from manualbp.nodes import Add, Multiply
from manualbp.norm import BatchNorm, LayerNorm
from manualbp.report import Report, Row
from manualbp.residual import Residual
from manualbp.sequential import Parallel, Sequential
from manualbp.tolerances import Tolerance, tolerance

# the comparison tools import the reference, which registers rules for the layers above
from manualbp.compare import check_layer, compare  # noqa: E402  isort: skip

__all__ = [
    "GELU", "Add", "BatchNorm", "LayerNorm", "Residual", "Dense", "Elementwise", "Identity", "Layer", "LeakyReLU", "MeanSquaredError",
    "Multiply", "Parallel", "ReLU", "Report", "Row", "Sequential", "Sigmoid", "SigmoidBinaryCrossEntropy",
    "Softplus", "SoftmaxCrossEntropy", "Tanh", "Tolerance", "check_layer", "compare", "gradcheck", "tolerance",
    "value_and_grad",
]
