"""Reference RNN: the textbook step inside ``lax.scan``, its h_t tapped per step (see ``recurrent_base``), gradients from jax.grad.

Each step computes x_t Wx + h_(t-1) Wh + b itself (nothing hoisted). The
activation of the RNN is the reference forward of its class (jax.nn).
"""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import NoTaps, forward
from .recurrent_base import keep, plus_tap, sequence_output, split_input, split_lengths, step_taps


@forward.register
def _(layer: mbp.RNN, params, x, taps):
    x, lengths = split_lengths(layer, x)
    x, (h0,) = split_input(layer, x, 1)
    (ph,) = step_taps(taps, ("h",), x, layer.hidden)

    def step(h_prev, inputs):
        t, x_t, p_t = inputs
        z = jnp.dot(x_t, params["Wx"]) + jnp.dot(h_prev, params["Wh"]) + params["b"][None, :]
        h = plus_tap(keep(t, lengths, forward(layer.activation, {}, z, NoTaps()), h_prev), p_t)
        return h, h

    _, hs = lax.scan(step, h0, (jnp.arange(x.shape[1]), jnp.swapaxes(x, 0, 1), ph))
    return sequence_output(layer, hs, lengths)
