"""Reference heads: optax.losses, mean- (or mask-) reduced over examples.

Invalid values give NaN, the manual heads' contract under ``jax.jit``: an
integer label outside [0, C) (optax alone reads -1 as the last class, and
gives C a NaN loss but a finite gradient) or a binary label outside [0, 1]
makes that row's loss and gradient NaN; an invalid mask entry makes all of
them NaN (``masked_mean``).
"""

import jax.numpy as jnp
import optax

import manualbp.layers as mbp

from .dispatch import head_forward, masked_mean


@head_forward.register
def _(head: mbp.SoftmaxCrossEntropy, logits, labels, mask=None):
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        ids = labels.astype(jnp.int64 if labels.dtype.itemsize == 8 else jnp.int32)  # no wrap-around in uint8
        bad = (ids < 0) | (ids >= logits.shape[-1])
        logits = logits + jnp.where(bad, jnp.nan, 0).astype(logits.dtype)[..., None]  # NaN row: loss and gradient
        per = optax.losses.softmax_cross_entropy_with_integer_labels(logits, jnp.where(bad, 0, ids))
    else:
        per = optax.losses.softmax_cross_entropy(logits, labels)
    return masked_mean(per, mask)


@head_forward.register
def _(head: mbp.SigmoidBinaryCrossEntropy, logits, labels, mask=None):
    y = jnp.asarray(labels).astype(logits.dtype)
    y = jnp.where((y >= 0) & (y <= 1), y, jnp.nan)
    per = optax.losses.sigmoid_binary_cross_entropy(logits, y).sum(-1)
    return masked_mean(per, mask)


@head_forward.register
def _(head: mbp.MeanSquaredError, logits, labels, mask=None):
    per = 0.5 * optax.losses.squared_error(logits, jnp.asarray(labels)).sum(-1)
    return masked_mean(per, mask)
