"""Loss-head mutants (heads.py), and a clipping mutant (training/clip.py) that only a twin run can judge.

A head's dlogits is the gradient arriving at the model's last layer, so a head bug's first failing row is
that layer's dL/dy. ``n`` below is the number of examples (every axis of the logits but the last), ``w``
the example weights 1/n (or m / sum(m) under a mask).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

import manualbp as mbp
from mutants.base import HeadSeesIO, head_mutant_of


def _n(z):
    return math.prod(z.shape[:-1])


@head_mutant_of(mbp.SoftmaxCrossEntropy)
class SoftmaxCEForgotMean(HeadSeesIO, mbp.SoftmaxCrossEntropy):
    """dz = softmax(z) - c: the 1/N of the mean over examples dropped."""

    def backward(self, cache):
        _, z, labels, _ = cache
        return jax.nn.softmax(z) - jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)  # right: ( ... ) / N


@head_mutant_of(mbp.SoftmaxCrossEntropy)
class SoftmaxCEMaskIgnored(HeadSeesIO, mbp.SoftmaxCrossEntropy):
    """dz = (softmax(z) - c) / N over every example: the mask's weights m / sum(m) forgotten in backward."""

    def backward(self, cache):
        _, z, labels, _ = cache
        return (jax.nn.softmax(z) - jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype)) / _n(z)  # right: * w


@head_mutant_of(mbp.SigmoidBinaryCrossEntropy)
class SigmoidBCESquashedTwice(HeadSeesIO, mbp.SigmoidBinaryCrossEntropy):
    """dz = (s - y) s (1 - s) / N: the sigmoid's derivative chained in again, as for a squared error on s."""

    def backward(self, cache):
        _, z, y, _ = cache
        s = jax.nn.sigmoid(z)
        return (s - y) * s * (1 - s) / _n(z)  # right: (s - y) / N


@head_mutant_of(mbp.MeanSquaredError)
class MSEFactorTwo(HeadSeesIO, mbp.MeanSquaredError):
    """da = 2 (a - y) / N: the derivative of ||a - y||^2, for the cost 1/(2N) sum ||a - y||^2."""

    def backward(self, cache):
        _, a, y, _ = cache
        return 2 * (a - y) / _n(a)  # right: (a - y) / N


@head_mutant_of(mbp.MeanSquaredError)
class MSEResidualReversed(HeadSeesIO, mbp.MeanSquaredError):
    """da = (y - a) / N: the residual written target minus output, the derivative of (y - a)^2 taken in y."""

    def backward(self, cache):
        _, a, y, _ = cache
        return (y - a) / _n(a)  # right: (a - y) / N


@head_mutant_of(mbp.MeanSquaredError)
class MSEMaskMeanOverAll(HeadSeesIO, mbp.MeanSquaredError):
    """da = m (a - y) / N: padding zeroed, but divided by every position N instead of sum(m)."""

    def backward(self, cache):
        _, a, y, mask = cache
        return mask[..., None].astype(a.dtype) * (a - y) / _n(a)  # right: / sum(m)


def clip_each_leaf(max_norm: float) -> optax.GradientTransformation:
    """``clip_by_global_norm`` with the norm taken per parameter leaf instead of over all leaves at once."""

    def update_fn(updates, state, params=None):
        del params
        clip = lambda g: jnp.where(jnp.linalg.norm(g) < max_norm, g, g / jnp.linalg.norm(g) * max_norm)  # noqa: E731
        return jax.tree_util.tree_map(clip, updates), state  # right: one global norm for every leaf

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
