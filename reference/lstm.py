"""Reference LSTM: the textbook step inside ``lax.scan``, its h_t and c_t tapped per step (see ``recurrent_base``)."""

import jax
import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward
from .recurrent_base import keep, plus_tap, sequence_output, split_input, split_lengths, step_taps


@forward.register
def _(layer: mbp.LSTM, params, x, taps):
    x, lengths = split_lengths(layer, x)
    x, (h0, c0) = split_input(layer, x, 2)
    ph, pc = step_taps(taps, ("h", "c"), x, layer.hidden)

    def step(state, inputs):
        h_prev, c_prev = state
        t, x_t, p_h, p_c = inputs
        z = jnp.dot(x_t, params["Wx"]) + jnp.dot(h_prev, params["Wh"]) + params["b"][None, :]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        c_new = jax.nn.sigmoid(zf) * c_prev + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        c = plus_tap(keep(t, lengths, c_new, c_prev), p_c)  # the tap on c_t reaches h_t and c_(t+1)
        h = plus_tap(keep(t, lengths, jax.nn.sigmoid(zo) * jnp.tanh(c), h_prev), p_h)
        return (h, c), h

    _, hs = lax.scan(step, (h0, c0), (jnp.arange(x.shape[1]), jnp.swapaxes(x, 0, 1), ph, pc))
    return sequence_output(layer, hs, lengths)
