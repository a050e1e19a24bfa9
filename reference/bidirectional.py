"""Reference Bidirectional: the two layers' reference forwards on x and on x reversed, tapped under "forward" / "backward".

With variable lengths the backward layer reads each sequence's real steps last to first: x[b, ::-1] rolled by
lengths[b] - T, so that its step t is x[b, L - 1 - t] for t < L, then zeroed at the padded steps t >= L; its outputs
go back the same way.
"""

import jax
import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import apply, forward


def _reverse(a, lengths):
    if lengths is None:
        return a[:, ::-1]
    T = a.shape[1]
    n = jnp.clip(lengths, 0, T)
    rolled = jax.vmap(lambda row, n: jnp.roll(row[::-1], n - T, axis=0))(a, n)
    return rolled * (jnp.arange(T)[None, :] < n[:, None]).reshape(*n.shape, T, *(1,) * (a.ndim - 2)).astype(a.dtype)


@forward.register
def _(layer: mbp.Bidirectional, params, x, taps):
    if layer.variable_length:
        x, lengths = x
        pack = lambda a: (a, lengths)  # noqa: E731
    else:
        lengths, pack = None, lambda a: a  # noqa: E731
    y_forward = apply(layer.layer, params["forward"], pack(x), taps.child("forward"))
    y_backward = apply(layer.backward_layer, params["backward"], pack(_reverse(x, lengths)), taps.child("backward"))
    if y_backward.ndim == 3:  # all steps: put the backward states back in x's time order
        y_backward = _reverse(y_backward, lengths)
    return jnp.concatenate([y_forward, y_backward], axis=-1)
