"""Reference heads: optax.losses, mean- (or mask-) reduced over examples."""

import jax.numpy as jnp
import optax

import manualbp.layers as mbp

from .dispatch import head_forward, masked_mean


@head_forward.register
def _(head: mbp.SoftmaxCrossEntropy, logits, labels, mask=None):
    if jnp.issubdtype(labels.dtype, jnp.integer):
        per = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        per = optax.losses.softmax_cross_entropy(logits, labels)
    return masked_mean(per, mask)


@head_forward.register
def _(head: mbp.SigmoidBinaryCrossEntropy, logits, labels, mask=None):
    per = optax.losses.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).sum(-1)
    return masked_mean(per, mask)


@head_forward.register
def _(head: mbp.MeanSquaredError, logits, labels, mask=None):
    per = 0.5 * optax.losses.squared_error(logits, labels).sum(-1)
    return masked_mean(per, mask)
