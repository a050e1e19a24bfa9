"""Reference RNN (and the per-step taps every recurrent twin uses): the textbook step inside ``lax.scan``, gradients from jax.grad.

Each step computes x_t Wx + h_(t-1) Wh + b itself (nothing hoisted). A zero
perturbation p_t is added to every h_t INSIDE the scan (h_t' = h_t + p_t is
carried on and emitted), so the gradient with respect to the tap "h" of
shape (B, T, H) is the total dL/dh_t; the LSTM taps its cell state c_t the
same way ("c", in ``lstm``). The activation of the RNN is the reference forward of its
class (jax.nn).
"""

import jax.numpy as jnp
from jax import lax

import manualbp.layers as mbp

from .dispatch import NoTaps, forward


def split_input(layer, x, n_states):
    """(x, initial states): given, or zeros of shape (B, H)."""
    if layer.initial_state == "given":
        return x[0], tuple(x[1 : 1 + n_states])
    B = x.shape[0]
    return x, tuple(jnp.zeros((B, layer.hidden), x.dtype) for _ in range(n_states))


def step_taps(taps, kinds, x, hidden):
    """Per-step zero perturbations, time-major (T, B, H); None when there are no taps (plain training)."""
    if isinstance(taps, NoTaps):
        return tuple(None for _ in kinds)
    B, T, _ = x.shape
    return tuple(jnp.swapaxes(taps.perturbation(kind, (B, T, hidden), x.dtype), 0, 1) for kind in kinds)


def plus_tap(a, p):
    return a if p is None else a + p


def sequence_output(layer, hs):
    hs = jnp.swapaxes(hs, 0, 1)  # (B, T, H)
    return hs if layer.return_sequences else hs[:, -1]


@forward.register
def _(layer: mbp.RNN, params, x, taps):
    x, (h0,) = split_input(layer, x, 1)
    (ph,) = step_taps(taps, ("h",), x, layer.hidden)

    def step(h_prev, inputs):
        x_t, p_t = inputs
        z = jnp.dot(x_t, params["Wx"]) + jnp.dot(h_prev, params["Wh"]) + params["b"][None, :]
        h = plus_tap(forward(layer.activation, {}, z, NoTaps()), p_t)
        return h, h

    _, hs = lax.scan(step, h0, (jnp.swapaxes(x, 0, 1), ph))
    return sequence_output(layer, hs)
