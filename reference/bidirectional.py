"""Reference Bidirectional: the two layers' reference forwards on x and on x[:, ::-1], tapped under "forward" / "backward"."""

import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import apply, forward


@forward.register
def _(layer: mbp.Bidirectional, params, x, taps):
    y_forward = apply(layer.layer, params["forward"], x, taps.child("forward"))
    y_backward = apply(layer.backward_layer, params["backward"], x[:, ::-1], taps.child("backward"))
    if y_backward.ndim == 3:  # all steps: put the backward states back in x's time order
        y_backward = y_backward[:, ::-1]
    return jnp.concatenate([y_forward, y_backward], axis=-1)
