"""Reference RNN and LSTM: the textbook step inside ``lax.scan``, gradients from jax.grad.

Each step computes x_t Wx + h_(t-1) Wh + b itself (nothing hoisted). A zero
perturbation p_t is added to every h_t INSIDE the scan (h_t' = h_t + p_t is
carried on and emitted), so the gradient with respect to the tap "h" of
shape (B, T, H) is the total dL/dh_t; the LSTM taps its cell state c_t the
same way ("c"). The activation of the RNN is the reference forward of its
class (jax.nn).
"""

import jax
import jax.numpy as jnp
from jax import lax

import manualbp as mbp
from reference.layer import NoTaps, forward


def _split_input(layer, x, n_states):
    """(x, initial states): given, or zeros of shape (B, H)."""
    if layer.initial_state == "given":
        return x[0], tuple(x[1 : 1 + n_states])
    B = x.shape[0]
    return x, tuple(jnp.zeros((B, layer.hidden), x.dtype) for _ in range(n_states))


def _step_taps(taps, kinds, x, hidden):
    """Per-step zero perturbations, time-major (T, B, H); None when there are no taps (plain training)."""
    if isinstance(taps, NoTaps):
        return tuple(None for _ in kinds)
    B, T, _ = x.shape
    return tuple(jnp.swapaxes(taps.perturbation(kind, (B, T, hidden), x.dtype), 0, 1) for kind in kinds)


def _plus(a, p):
    return a if p is None else a + p


def _output(layer, hs):
    hs = jnp.swapaxes(hs, 0, 1)  # (B, T, H)
    return hs if layer.return_sequences else hs[:, -1]


@forward.register
def _(layer: mbp.RNN, params, x, taps):
    x, (h0,) = _split_input(layer, x, 1)
    (ph,) = _step_taps(taps, ("h",), x, layer.hidden)

    def step(h_prev, inputs):
        x_t, p_t = inputs
        z = jnp.dot(x_t, params["Wx"]) + jnp.dot(h_prev, params["Wh"]) + params["b"][None, :]
        h = _plus(forward(layer.activation, {}, z, NoTaps()), p_t)
        return h, h

    _, hs = lax.scan(step, h0, (jnp.swapaxes(x, 0, 1), ph))
    return _output(layer, hs)


@forward.register
def _(layer: mbp.LSTM, params, x, taps):
    x, (h0, c0) = _split_input(layer, x, 2)
    ph, pc = _step_taps(taps, ("h", "c"), x, layer.hidden)

    def step(state, inputs):
        h_prev, c_prev = state
        x_t, p_h, p_c = inputs
        z = jnp.dot(x_t, params["Wx"]) + jnp.dot(h_prev, params["Wh"]) + params["b"][None, :]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        c = _plus(jax.nn.sigmoid(zf) * c_prev + jax.nn.sigmoid(zi) * jnp.tanh(zg), p_c)
        h = _plus(jax.nn.sigmoid(zo) * jnp.tanh(c), p_h)
        return (h, c), h

    _, hs = lax.scan(step, (h0, c0), (jnp.swapaxes(x, 0, 1), ph, pc))
    return _output(layer, hs)
