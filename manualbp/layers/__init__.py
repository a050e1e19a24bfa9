"""The layers: each file one family, forward AND hand-written backward, the formula in the docstring.

Every file here imports only ``base`` (the layer protocol and the input
checks) and its own family; ``reference/`` holds, file for file, the same
layers' forwards written with library ops and differentiated by jax.grad.
"""

from manualbp.layers.activations import GELU, Elementwise, Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from manualbp.layers.attention import MultiHeadAttention
from manualbp.layers.base import Layer
from manualbp.layers.bidirectional import Bidirectional
from manualbp.layers.conv import Conv2D
from manualbp.layers.conv1d import Conv1D
from manualbp.layers.conv_transpose import ConvTranspose2D
from manualbp.layers.dense import Dense
from manualbp.layers.dropout import Dropout, with_dropout_key, without_dropout
from manualbp.layers.embedding import Embedding
from manualbp.layers.fsdp import FSDPDense
from manualbp.layers.global_pool import GlobalAvgPool2D, GlobalMaxPool2D
from manualbp.layers.gru import GRU
from manualbp.layers.heads import MeanSquaredError, SigmoidBinaryCrossEntropy, SoftmaxCrossEntropy
from manualbp.layers.lstm import LSTM
from manualbp.layers.nodes import Add, Multiply
from manualbp.layers.norm import BatchNorm, LayerNorm
from manualbp.layers.parallel_attention import ParallelAttention, parallel_block
from manualbp.layers.pool import AvgPool2D, MaxPool2D
from manualbp.layers.positional import PositionalEmbedding
from manualbp.layers.reshape import Flatten
from manualbp.layers.residual import Residual
from manualbp.layers.rnn import RNN
from manualbp.layers.sequential import Parallel, Sequential
from manualbp.layers.softmax import Softmax
from manualbp.layers.tensor_parallel import ColumnParallelDense, RowParallelDense, parallel_mlp
from manualbp.layers.transformer import TransformerBlock

__all__ = [
    "Add", "AvgPool2D", "BatchNorm", "Bidirectional", "ColumnParallelDense", "Conv1D", "Conv2D", "ConvTranspose2D",
    "Dense", "Dropout", "Elementwise", "Embedding", "FSDPDense", "Flatten", "GELU", "GRU", "GlobalAvgPool2D",
    "GlobalMaxPool2D", "Identity", "LSTM", "Layer", "LayerNorm", "LeakyReLU", "MaxPool2D", "MeanSquaredError",
    "MultiHeadAttention", "Multiply", "Parallel", "ParallelAttention", "PositionalEmbedding", "RNN", "ReLU",
    "Residual", "RowParallelDense", "Sequential", "Sigmoid", "SigmoidBinaryCrossEntropy", "Softmax",
    "SoftmaxCrossEntropy", "Softplus", "Tanh", "TransformerBlock", "parallel_block", "parallel_mlp",
    "with_dropout_key", "without_dropout"
]
