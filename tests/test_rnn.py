"""The RNN (rnn.py): any activation, padded steps, its init, its own bad input. What it shares with the LSTM
and the GRU is tested in test_recurrent_base.py."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp


@partial(jax.jit, static_argnums=0)
def _jitted_trace(layer, params, x, dy):
    return layer.backward_trace(params, layer.forward(params, x)[1], dy)


@pytest.mark.parametrize(
    "activation", [mbp.Sigmoid(), mbp.GELU(approximate=False)],  # caches: the output; a pair (ReLU: FD test)
    ids=lambda a: type(a).__name__,
)
def test_rnn_any_activation(activation):
    layer = mbp.RNN(4, activation)
    x = jax.random.normal(jax.random.key(1), (2, 3, 3), jnp.float64)
    params, _ = layer.init(jax.random.key(0), (3, 3), jnp.float64)
    assert mbp.check_layer(layer, params, x, jit=True).ok


def test_padded_steps_get_no_gradient():
    """With the loss masked after step 3 (dy = 0 there, as the masked head gives), dL/dh_t = 0 for t >= 3."""
    layer = mbp.RNN(3)
    params, _ = layer.init(jax.random.key(0), (6, 2), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 6, 2), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), (2, 6, 3), jnp.float64).at[0, 3:].set(0)
    _, _, steps = _jitted_trace(layer, params, x, dy)
    assert jnp.all(steps["h"][0, 3:] == 0) and jnp.all(steps["h"][1] != 0)


def _rnn(**kw):
    layer = mbp.RNN(4, **kw)
    in_shape = ((3, 2), (4,)) if kw.get("initial_state") == "given" else (3, 2)
    return layer, layer.init(jax.random.key(0), in_shape, jnp.float32)[0]


def test_wrong_dtypes():
    layer, params = _rnn()
    with pytest.raises(TypeError, match="RNN: x has dtype float16 but Wx has float32"):
        layer.forward(params, jnp.ones((1, 3, 2), jnp.float16))
    with pytest.raises(TypeError, match=r"RNN: expected x of a floating dtype, got int32\[1,3,2\]"):
        layer.forward(params, jnp.ones((1, 3, 2), jnp.int32))


def test_params_tree_mismatch():
    layer, params = _rnn()
    with pytest.raises(ValueError, match=r"RNN: expected params with keys \['Wh', 'Wx', 'b'\], got \['Wx'\]"):
        layer.forward({"Wx": params["Wx"]}, jnp.ones((1, 3, 2), jnp.float32))


def test_init_is_the_shared_recurrent_initialiser():
    """Wx LeCun-normal and Wh orthogonal from split(key), b zeros: pinned, so a change of init shows here."""
    layer = mbp.RNN(4)
    params, out_shape = layer.init(jax.random.key(3), (5, 3), jnp.float64)
    kx, kh = jax.random.split(jax.random.key(3))
    assert out_shape == (5, 4) and sorted(params) == ["Wh", "Wx", "b"]
    assert jnp.array_equal(params["Wx"], jax.random.normal(kx, (3, 4), jnp.float64) / jnp.sqrt(3.0))
    assert jnp.array_equal(params["Wh"], jax.nn.initializers.orthogonal()(kh, (4, 4), jnp.float64))
    assert jnp.array_equal(params["b"], jnp.zeros(4))
    assert jnp.allclose(params["Wh"] @ params["Wh"].T, jnp.eye(4), atol=1e-12)  # orthogonal
    assert all(v.dtype == jnp.float64 for v in params.values())
