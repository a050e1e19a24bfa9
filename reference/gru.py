"""Reference GRU (PyTorch's convention): the textbook step inside ``lax.scan``, its h_t tapped per step (see ``recurrent_base``)."""

import jax
import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import forward
from .recurrent_base import keep, plus_tap, sequence_output, split_input, split_lengths, step_taps


@forward.register
def _(layer: mbp.GRU, params, x, taps):
    x, lengths = split_lengths(layer, x)
    x, (h0,) = split_input(layer, x, 1)
    (ph,) = step_taps(taps, ("h",), x, layer.hidden)
    Wxr, Wxz, Wxn = jnp.split(params["Wx"], 3, axis=1)
    Whr, Whz, Whn = jnp.split(params["Wh"], 3, axis=1)
    br, bz, bn = jnp.split(params["b"], 3)

    def step(h_prev, inputs):
        t, x_t, p_t = inputs
        r = jax.nn.sigmoid(jnp.dot(x_t, Wxr) + br[None, :] + jnp.dot(h_prev, Whr))
        z = jax.nn.sigmoid(jnp.dot(x_t, Wxz) + bz[None, :] + jnp.dot(h_prev, Whz))
        n = jnp.tanh(jnp.dot(x_t, Wxn) + bn[None, :] + r * (jnp.dot(h_prev, Whn) + params["bhn"][None, :]))
        h = plus_tap(keep(t, lengths, (1.0 - z) * n + z * h_prev, h_prev), p_t)
        return h, h

    _, hs = lax.scan(step, h0, (jnp.arange(x.shape[1]), jnp.swapaxes(x, 0, 1), ph))
    return sequence_output(layer, hs, lengths)
