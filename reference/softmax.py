"""Reference Softmax: jax.nn.softmax."""

import jax

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Softmax, params, x, taps):
    return jax.nn.softmax(x, axis=layer.axis)
