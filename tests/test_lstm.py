"""The LSTM (lstm.py): its per-step gradients of h and c, and the gradient it keeps where an RNN loses it. What it
shares with the RNN and the GRU is tested in test_recurrent_base.py."""

from functools import partial

import jax
import jax.numpy as jnp

import manualbp as mbp
from manualbp.verify.verdict import judge


@partial(jax.jit, static_argnums=0)
def _jitted_trace(layer, params, x, dy):
    return layer.backward_trace(params, layer.forward(params, x)[1], dy)


def test_last_step_total_gradient_is_the_upstream_gradient():
    layer = mbp.LSTM(3, return_sequences=False)
    params, _ = layer.init(jax.random.key(0), (4, 2), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 4, 2), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), (2, 3), jnp.float64)
    dparams, dx, steps = _jitted_trace(layer, params, x, dy)
    assert steps["h"].shape == (2, 4, 3) and steps["c"].shape == (2, 4, 3)
    assert jnp.array_equal(steps["h"][:, -1], dy)
    dparams2, dx2 = layer.backward(params, layer.forward(params, x)[1], dy)  # eager, without the per-step rows
    for a, b in zip(jax.tree_util.tree_leaves((dparams, dx)), jax.tree_util.tree_leaves((dparams2, dx2)), strict=True):
        assert judge("LSTM", "backward vs backward_trace", a, b, mbp.tolerance(jnp.float64)).ok


def test_lstm_keeps_the_gradient_that_rnn_loses():
    """dy on the last of 40 steps only: ||dL/dh_1|| / ||dL/dh_T|| is far smaller for a sigmoid RNN than an LSTM."""
    T, D, H = 40, 3, 8
    x = jax.random.normal(jax.random.key(1), (4, T, D), jnp.float64)
    dy = jax.random.normal(jax.random.key(2), (4, H), jnp.float64)
    decay = {}
    for layer in (mbp.RNN(H, mbp.Sigmoid(), return_sequences=False), mbp.LSTM(H, return_sequences=False)):
        params, _ = layer.init(jax.random.key(0), (T, D), jnp.float64)
        dh = _jitted_trace(layer, params, x, dy)[2]["h"]  # (B, T, H)
        norms = jnp.sqrt(jnp.sum(dh**2, axis=(0, 2)))
        decay[layer.name] = float(norms[0] / norms[-1])
    assert decay["RNN"] < 1e-6 < decay["LSTM"], decay
