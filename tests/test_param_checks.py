"""Parameters are checked against the hyperparameters and the input, and gradients come back with exactly their shapes.

Nothing is broadcast or promoted: a Dense bias of shape (1,) or dtype float16, a 5x5 kernel given to a
3x3 Conv2D, an Embedding table of rank 1, weights handed to a parameter-free layer: each is an error
naming the layer, the parameter, the expected and the actual shape or dtype (a static check: free under jit).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp

F32 = jnp.float32


def _x(shape, dtype=F32):
    return host(np.random.default_rng(1).standard_normal(shape), dtype)


# (layer, input shape without batch, input)
LAYERS = [
    (mbp.Dense(3), (4,), None),
    (mbp.Dense(3, use_bias=False), (2, 4), None),
    (mbp.Conv2D(2, 3, padding="SAME"), (5, 5, 3), None),
    (mbp.Conv2D(2, (2, 3), stride=2, padding="VALID", use_bias=False), (5, 6, 1), None),
    (mbp.Embedding(7, 3), (4,), jnp.array([[0, 6, 2, 2], [1, 1, 5, 3]])),
    (mbp.RNN(4), (3, 2), None),
    (mbp.LSTM(4, return_sequences=False), (3, 2), None),
    (mbp.LayerNorm(), (3, 5), None),
    (mbp.BatchNorm(), (4,), None),
    (mbp.Identity(), (4,), None),
    (mbp.Sigmoid(), (4,), None),
    (mbp.Tanh(), (4,), None),
    (mbp.ReLU(), (4,), None),
    (mbp.LeakyReLU(), (4,), None),
    (mbp.Softplus(), (4,), None),
    (mbp.GELU(), (4,), None),
    (mbp.Elementwise(jnp.sin, jnp.cos), (4,), None),
    (mbp.MaxPool2D(2), (4, 4, 2), None),
    (mbp.AvgPool2D(3, 1, "SAME"), (4, 4, 2), None),
    (mbp.Flatten(), (2, 3), None),
    (mbp.Residual(mbp.Sequential(mbp.Dense(4), mbp.Tanh())), (4,), None),
    (mbp.Sequential(mbp.Dense(5), mbp.ReLU(), mbp.Dense(2)), (3,), None),
    (mbp.Sequential(mbp.Parallel(mbp.Dense(3), mbp.Dense(3)), mbp.Multiply()), (2,), None),
    (mbp.Sequential(mbp.Parallel(mbp.Tanh(), mbp.Identity()), mbp.Add()), (2,), None),
]


@pytest.mark.parametrize("run, dtype", [("traced", jnp.float32), ("traced", jnp.float64), ("eager", jnp.float32)],
                         ids=["traced-float32", "traced-float64", "eager-float32"])
@pytest.mark.parametrize("layer, shape, x", LAYERS, ids=[repr(layer)[:40] for layer, _, _ in LAYERS])
def test_gradients_come_back_with_exactly_the_params_shapes_and_dtypes(layer, shape, x, dtype, run):
    """Shapes and dtypes are what tracing gives (``jax.eval_shape``: what jit would compile, without compiling);
    run eagerly, the same backward makes arrays of those very shapes and dtypes."""
    def step(params, x):
        y, cache = layer.forward(params, x)
        dy = jax.tree_util.tree_map(jnp.ones_like, y)
        return layer.backward(params, cache, dy)[0]

    if run == "traced":
        params = jax.eval_shape(lambda: layer.init(jax.random.key(0), shape, dtype)[0])
        grads = jax.eval_shape(step, params, jax.ShapeDtypeStruct((2, *shape), dtype) if x is None else x)
    else:  # the parameters made on the host, in the shapes init gives (init itself runs eagerly in every layer's tests)
        shapes = jax.eval_shape(lambda: layer.init(jax.random.key(0), shape, dtype)[0])
        params = jax.tree_util.tree_map(lambda s: _x(s.shape, s.dtype), shapes)
        grads = step(params, _x((2, *shape), dtype) if x is None else x)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)):
        assert (g.shape, g.dtype) == (p.shape, p.dtype)


def _dense_params(**b):
    return {"W": jnp.zeros((4, 3), F32), **b}


@pytest.mark.parametrize("params, error, match", [
    (_dense_params(b=jnp.zeros((1,), F32)), ValueError, r"Dense: expected parameter b of shape \(3,\) \(features,\), got \(1,\)"),
    (_dense_params(b=jnp.zeros((), F32)), ValueError, r"Dense: expected parameter b of shape \(3,\) \(features,\), got \(\)"),
    (_dense_params(b=jnp.zeros((3,), jnp.int32)), TypeError, r"Dense: expected parameter b of a floating dtype, got int32\[3\]"),
    (_dense_params(b=jnp.zeros((3,), jnp.float16)), TypeError, r"Dense: x has dtype float32 but b has float16"),
    ({"W": jnp.zeros((4, 5), F32), "b": jnp.zeros((3,), F32)}, ValueError,
     r"Dense: expected parameter W of shape \(4, 3\) \(in, features\), got \(4, 5\)"),
    ({"W": jnp.zeros((12,), F32), "b": jnp.zeros((3,), F32)}, ValueError,
     r"Dense: expected parameter W of shape \(4, 3\) \(in, features\), got \(12,\)"),
    ({"W": [[0.0] * 3] * 4, "b": jnp.zeros((3,), F32)}, TypeError,
     r"Dense: expected parameter W to be an array of shape \(4, 3\), got list"),
], ids=["b(1,)", "b()", "b-int32", "b-float16", "W-features", "W-rank1", "W-list"])
def test_dense_parameters(params, error, match):
    with pytest.raises(error, match=match):
        mbp.Dense(3).forward(params, jnp.ones((2, 4), F32))
    if not isinstance(params["W"], list):  # the same check under jit: shapes and dtypes are static
        with pytest.raises(error, match=match):
            jax.jit(lambda p, x: mbp.Dense(3).forward(p, x)[0])(params, jnp.ones((2, 4), F32))


def test_conv2d_parameters():
    layer = mbp.Conv2D(2, 3)
    x = jnp.ones((1, 6, 6, 3), F32)
    with pytest.raises(ValueError, match=r"Conv2D: expected parameter W of shape \(3, 3, 3, 2\) \(kh, kw, C, features\), "
                                         r"HWIO, got \(5, 5, 3, 2\)"):
        layer.forward({"W": jnp.zeros((5, 5, 3, 2), F32), "b": jnp.zeros((2,), F32)}, x)
    with pytest.raises(ValueError, match=r"Conv2D: expected parameter W of shape \(3, 3, 3, 2\) .* got \(9, 6\)"):
        layer.forward({"W": jnp.zeros((9, 6), F32), "b": jnp.zeros((2,), F32)}, x)  # was an IndexError
    with pytest.raises(ValueError, match=r"Conv2D: expected parameter W of shape \(3, 3, 3, 2\) .* got \(3, 3, 3, 4\)"):
        layer.forward({"W": jnp.zeros((3, 3, 3, 4), F32), "b": jnp.zeros((2,), F32)}, x)
    with pytest.raises(ValueError, match=r"Conv2D: expected parameter b of shape \(2,\) \(features,\), got \(1,\)"):
        layer.forward({"W": jnp.zeros((3, 3, 3, 2), F32), "b": jnp.zeros((1,), F32)}, x)


def test_embedding_recurrent_and_norm_parameters():
    ids = jnp.array([[0, 1]])
    with pytest.raises(ValueError, match=r"Embedding: expected parameter E of shape \(5, 2\) \(vocab, features\), got \(10,\)"):
        mbp.Embedding(5, 2).forward({"E": jnp.zeros((10,), F32)}, ids)
    with pytest.raises(ValueError, match=r"Embedding: expected parameter E of shape \(5, 2\) \(vocab, features\), got \(6, 2\)"):
        mbp.Embedding(5, 2).forward({"E": jnp.zeros((6, 2), F32)}, ids)
    with pytest.raises(TypeError, match=r"Embedding: expected parameter E of a floating dtype, got int32\[5,2\]"):
        mbp.Embedding(5, 2).forward({"E": jnp.zeros((5, 2), jnp.int32)}, ids)
    x = jnp.ones((2, 3, 2), F32)
    lstm, lstm_params = mbp.LSTM(4), mbp.LSTM(4).init(jax.random.key(0), (3, 2))[0]
    with pytest.raises(ValueError, match=r"LSTM: expected parameter Wh of shape \(4, 16\) \(hidden, 4 hidden\), got \(4, 4\)"):
        lstm.forward({**lstm_params, "Wh": jnp.zeros((4, 4), F32)}, x)
    with pytest.raises(ValueError, match=r"LSTM: expected parameter b of shape \(16,\) \(4 hidden,\), got \(1,\)"):
        lstm.forward({**lstm_params, "b": jnp.zeros((1,), F32)}, x)
    rnn, rnn_params = mbp.RNN(4), mbp.RNN(4).init(jax.random.key(0), (3, 2))[0]
    with pytest.raises(TypeError, match=r"RNN: x has dtype float32 but Wh has float64"):
        rnn.forward({**rnn_params, "Wh": jnp.zeros((4, 4), jnp.float64)}, x)
    norm_params = {"gamma": jnp.ones((4,), F32), "beta": jnp.zeros((1,), F32)}
    with pytest.raises(ValueError, match=r"LayerNorm: expected parameter beta of shape \(4,\) \(x's last axis,\), got \(1,\)"):
        mbp.LayerNorm().forward(norm_params, jnp.ones((2, 4), F32))


@pytest.mark.parametrize("layer, x", [
    (mbp.Tanh(), _x((2, 3))), (mbp.ReLU(), _x((2, 3))), (mbp.MaxPool2D(2), _x((1, 4, 4, 1))),
    (mbp.AvgPool2D(2), _x((1, 4, 4, 1))), (mbp.Flatten(), _x((2, 3, 2))), (mbp.Add(), (_x((2, 3)), _x((2, 3)))),
    (mbp.Multiply(), (_x((2, 3)), _x((2, 3)))),
], ids=lambda v: type(v).__name__ if not isinstance(v, (tuple, jax.Array)) else "")
def test_parameter_free_layers_refuse_parameters(layer, x):
    with pytest.raises(ValueError, match=rf"{layer.name}: takes no parameters \(expected params {{}}\), got \['W'\]"):
        layer.forward({"W": jnp.zeros((3,), F32)}, x)
    y, _ = layer.forward({}, x)
    assert np.all(np.isfinite(y))
