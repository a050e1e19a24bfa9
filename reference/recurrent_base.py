"""What every recurrent twin shares (RNN, LSTM, GRU): input unpacking, per-step taps, output selection.

A zero perturbation p_t is added to every h_t INSIDE the scan (h_t' = h_t + p_t is carried on and
emitted), so the gradient with respect to the tap "h" of shape (B, T, H) is the total dL/dh_t; the
LSTM taps its cell state c_t the same way ("c", in ``lstm``).

Variable lengths: the scan also walks the step index t; where t >= lengths[b] the new state is
discarded for the old one (``keep``) and the output is zero (``sequence_output``). jax.grad then
finds on its own that a padded step passes the gradient through.
"""

import jax.numpy as jnp

from .dispatch import NoTaps


def split_lengths(layer, x):
    """(the input without its lengths, lengths): (x, None) for a layer without variable lengths.

    A length outside [0, T] (possible only under jax.jit, where it cannot raise) makes its sequence NaN at every
    step, as the manual layer does: its loss and gradients are NaN, never a plausible number.
    """
    if not getattr(layer, "variable_length", False):
        return x, None
    x, lengths, *states = x
    T = x.shape[1]
    bad = (lengths < 0) | (lengths > T)
    x = jnp.where(bad[:, None, None], jnp.nan, x)
    lengths = jnp.where(bad, T, lengths)
    return ((x, *states) if states else x), lengths


def split_input(layer, x, n_states):
    """(x, initial states): given, or zeros of shape (B, H)."""
    if layer.initial_state == "given":
        return x[0], tuple(x[1 : 1 + n_states])
    B = x.shape[0]
    return x, tuple(jnp.zeros((B, layer.hidden), x.dtype) for _ in range(n_states))


def keep(t, lengths, new, old):
    """The state after step t: ``new`` for the sequences still running (t < length), ``old`` for the others."""
    return new if lengths is None else jnp.where((t < lengths)[:, None], new, old)


def step_taps(taps, kinds, x, hidden):
    """Per-step zero perturbations, time-major (T, B, H); None when there are no taps (plain training)."""
    if isinstance(taps, NoTaps):
        return tuple(None for _ in kinds)
    B, T, _ = x.shape
    return tuple(jnp.swapaxes(taps.perturbation(kind, (B, T, hidden), x.dtype), 0, 1) for kind in kinds)


def plus_tap(a, p):
    return a if p is None else a + p


def sequence_output(layer, hs, lengths=None):
    hs = jnp.swapaxes(hs, 0, 1)  # (B, T, H)
    if not layer.return_sequences:
        return hs[:, -1]
    if lengths is None:
        return hs
    return hs * (jnp.arange(hs.shape[1])[None, :] < lengths[:, None])[:, :, None].astype(hs.dtype)  # padding: 0
