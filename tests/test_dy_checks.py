"""Every layer's backward checks its dy against y (``base.check_dy``): another shape or dtype is refused, never
broadcast or promoted, with a message naming the layer and the expected vs the actual shape or dtype.

A float16 dy into a float32 Dense would otherwise give float32 gradients computed from float16 values, and a dy of
another shape would be broadcast or reach XLA's own dot_general message.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp

F32 = jnp.float32
ONE_DEVICE = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))

# (layer, input shape without batch, the name a refusal gives: the layer itself or, in a container, the last layer)
LAYERS = [
    (mbp.Dense(3), (4,), "Dense"),
    (mbp.Conv2D(2, 3, padding="SAME"), (5, 5, 3), "Conv2D"),
    (mbp.Conv1D(2, 3), (6, 3), "Conv1D"),
    (mbp.ConvTranspose2D(2, 3, stride=2), (3, 3, 2), "ConvTranspose2D"),
    (mbp.RNN(4), (3, 2), "RNN"),
    (mbp.LSTM(4, return_sequences=False), (3, 2), "LSTM"),
    (mbp.GRU(4), (3, 2), "GRU"),
    (mbp.Bidirectional(mbp.GRU(3)), (4, 2), "Bidirectional"),
    (mbp.LayerNorm(), (3, 5), "LayerNorm"),
    (mbp.BatchNorm(), (4,), "BatchNorm"),
    (mbp.Identity(), (4,), "Identity"),
    (mbp.Sigmoid(), (4,), "Sigmoid"),
    (mbp.Tanh(), (4,), "Tanh"),
    (mbp.ReLU(), (4,), "ReLU"),
    (mbp.LeakyReLU(), (4,), "LeakyReLU"),
    (mbp.Softplus(), (4,), "Softplus"),
    (mbp.GELU(), (4,), "GELU"),
    (mbp.Elementwise(jnp.sin, jnp.cos), (4,), "Elementwise"),
    (mbp.Softmax(), (4,), "Softmax"),
    (mbp.Dropout(0.5, training=True, key=jax.random.key(3)), (4,), "Dropout"),
    (mbp.MaxPool2D(2), (4, 4, 2), "MaxPool2D"),
    (mbp.AvgPool2D(3, 1, "SAME"), (4, 4, 2), "AvgPool2D"),
    (mbp.GlobalAvgPool2D(), (4, 4, 2), "GlobalAvgPool2D"),
    (mbp.GlobalMaxPool2D(), (4, 4, 2), "GlobalMaxPool2D"),
    (mbp.Flatten(), (2, 3), "Flatten"),
    (mbp.PositionalEmbedding(6, 3), (4, 3), "PositionalEmbedding"),
    (mbp.MultiHeadAttention(2), (4, 6), "MultiHeadAttention"),
    (mbp.TransformerBlock(6, 2, hidden=8), (4, 6), "Dense"),
    (mbp.Residual(mbp.Sequential(mbp.Dense(4), mbp.Tanh())), (4,), "Tanh"),
    (mbp.Sequential(mbp.Dense(5), mbp.ReLU(), mbp.Dense(2)), (3,), "Dense"),
    (mbp.Sequential(mbp.Parallel(mbp.Dense(3), mbp.Dense(3)), mbp.Multiply()), (2,), "Multiply"),
    (mbp.Sequential(mbp.Parallel(mbp.Tanh(), mbp.Identity()), mbp.Add()), (2,), "Add"),
    # the tensor-parallel layers on a 1-device mesh: checked once, on the whole dy, before the per-device programs
    (mbp.ColumnParallelDense(4, ONE_DEVICE), (4,), "ColumnParallelDense"),
    (mbp.ColumnParallelDense(4, ONE_DEVICE, gather_output=True), (4,), "ColumnParallelDense"),
    (mbp.RowParallelDense(3, ONE_DEVICE), (4,), "RowParallelDense"),
    (mbp.FSDPDense(3, ONE_DEVICE), (4,), "FSDPDense"),
    (mbp.ParallelAttention(2, ONE_DEVICE, causal=True), (3, 4), "ParallelAttention"),
]


def _forward(layer, shape):
    params, _ = layer.init(jax.random.key(0), shape, F32)
    x = host(np.random.default_rng(1).standard_normal((2, *shape)), F32)
    y, cache = layer.forward(params, x)
    return params, y, cache


@pytest.mark.parametrize("layer, shape, name", LAYERS, ids=[n + "-" + repr(layer)[:30] for layer, _, n in LAYERS])
def test_a_dy_of_another_shape_or_dtype_is_refused(layer, shape, name):
    params, y, cache = _forward(layer, shape)
    wide = jnp.ones((*y.shape[:-1], y.shape[-1] + 1), F32)
    with pytest.raises(ValueError, match=rf"{name}: expected dy of shape .* \(the shape of y\), got "
                                         rf"{re_shape(wide.shape)}"):
        layer.backward(params, cache, wide)
    with pytest.raises(TypeError, match=rf"{name}: expected dy of dtype float32 \(the dtype of y\), got "
                                        rf"float16\[{','.join(map(str, y.shape))}\]; a gradient is never promoted"):
        layer.backward(params, cache, jnp.ones(y.shape, jnp.float16))
    grads, dx = layer.backward(params, cache, jnp.ones(y.shape, F32))  # the right dy: no complaint
    assert all(leaf.dtype == F32 for leaf in jax.tree_util.tree_leaves((grads, dx)))


def re_shape(shape):
    return r"\(" + ", ".join(map(str, shape)) + (",)" if len(shape) == 1 else r"\)")


def test_the_check_is_static_and_free_under_jit():
    layer = mbp.Dense(3)
    params, y, cache = _forward(layer, (4,))
    with pytest.raises(ValueError, match=r"Dense: expected dy of shape \(2, 3\) \(the shape of y\), got \(2, 1\)"):
        jax.jit(layer.backward)(params, cache, jnp.ones((2, 1), F32))
    with pytest.raises(TypeError, match=r"Dense: expected dy \(dL/dy\) as an array of y's shape \(2, 3\), got list"):
        layer.backward(params, cache, [[1.0, 2.0, 3.0]] * 2)
