"""Loss heads: forward(logits, labels, mask=None) -> (value, cache); backward(cache) -> dlogits.

Every head is mean-reduced over the examples, i.e. every axis but the last
(batch, and time for sequences): the total loss is an average of
per-example losses, C = (1/n) sum_x C_x, so the gradient is the average of
per-example gradients, dC/dw = (1/n) sum_x dC_x/dw (Nielsen, ch. 2). An
optional ``mask`` of shape ``logits.shape[:-1]`` (1 = real, 0 = padding)
turns the mean into a weighted mean over the real examples: weights
w_n = m_n / sum(m).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from manualbp.layers.base import check_array, describe, is_concrete


def _weights(head, logits, mask, per_example_shape):
    """w_n = 1/N, or m_n / sum(m) under a mask; shape per_example_shape."""
    if mask is None:
        n = int(np.prod(per_example_shape))
        return jnp.full(per_example_shape, 1.0 / n, logits.dtype)
    if tuple(mask.shape) != tuple(per_example_shape):
        raise ValueError(
            f"{head.name}: expected mask of shape {tuple(per_example_shape)} (logits' shape without "
            f"the last axis), got {tuple(mask.shape)}"
        )
    if is_concrete(mask) and not np.any(np.asarray(mask) > 0):
        raise ValueError(f"{head.name}: the mask selects no example (all zeros)")
    m = mask.astype(logits.dtype)
    return m / jnp.sum(m)


def _check_logits(head, logits):
    check_array(head, logits, what="logits")


class _Head:
    @property
    def name(self):
        return type(self).__name__


@dataclass(frozen=True)
class SoftmaxCrossEntropy(_Head):
    """L = sum_n w_n ( -sum_i c_ni log softmax(z_n)_i ), c = one-hot(label) or a probability target.

    labels: integers of shape logits.shape[:-1] in [0, C), or floats of
    logits' shape (each row a distribution).
    """

    def forward(self, logits, labels, mask=None):
        _check_logits(self, logits)
        C = logits.shape[-1]
        if jnp.issubdtype(labels.dtype, jnp.integer):
            if tuple(labels.shape) != tuple(logits.shape[:-1]):
                raise ValueError(
                    f"{self.name}: expected integer labels of shape {tuple(logits.shape[:-1])} "
                    f"for logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
                )
            if is_concrete(labels) and labels.size:
                lo, hi = int(np.min(np.asarray(labels))), int(np.max(np.asarray(labels)))
                if lo < 0 or hi >= C:
                    raise ValueError(
                        f"{self.name}: labels must lie in [0, {C}) for {C} classes, got values in [{lo}, {hi}]"
                    )
            classes = jnp.arange(C).reshape((1,) * labels.ndim + (C,))
            target = (labels[..., None] == classes).astype(logits.dtype)  # one-hot c
        elif jnp.issubdtype(labels.dtype, jnp.floating):
            if tuple(labels.shape) != tuple(logits.shape):
                raise TypeError(
                    f"{self.name}: float labels must be targets of logits' shape {tuple(logits.shape)}, "
                    f"got {describe(labels)}; pass integer class ids of shape {tuple(logits.shape[:-1])} "
                    "or one-hot/probability rows"
                )
            target = labels.astype(logits.dtype)
        else:
            raise TypeError(f"{self.name}: labels must be integers or floats, got {describe(labels)}")
        w = _weights(self, logits, mask, logits.shape[:-1])
        # max-subtracted log-softmax: no overflow of e^z, loss within ~1 ulp of optax's
        shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
        log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
        value = -jnp.sum(w * jnp.sum(target * log_p, axis=-1))
        return value, (jnp.exp(log_p), target, w)

    def backward(self, cache):
        """dL/dz_n = w_n (softmax(z_n) - c_n)  (dL/dz_i = p_i - c_i for the log-likelihood of a one-hot c; / N for the mean)."""
        p, target, w = cache
        return w[..., None] * (p - target)


@dataclass(frozen=True)
class SigmoidBinaryCrossEntropy(_Head):
    """L = sum_n w_n sum_i [ -y log s(z) - (1-y) log(1-s(z)) ], s = sigmoid; y in [0, 1], logits' shape.

    Computed in the stable form max(z, 0) - z y + log(1 + e^-|z|). A 2-class
    softmax over [z, 0] is exactly this sigmoid head.
    """

    def forward(self, logits, labels, mask=None):
        _check_logits(self, logits)
        if not jnp.issubdtype(labels.dtype, jnp.floating) and not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"{self.name}: labels must be numbers in [0, 1], got {describe(labels)}")
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(
                f"{self.name}: expected labels of logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        y = labels.astype(logits.dtype)
        w = _weights(self, logits, mask, logits.shape[:-1])
        z = logits
        per = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
        value = jnp.sum(w * jnp.sum(per, axis=-1))
        return value, (z, y, w)

    def backward(self, cache):
        """dL/dz_n = w_n (sigmoid(z_n) - y_n)."""
        z, y, w = cache
        return w[..., None] * (0.5 * (jnp.tanh(0.5 * z) + 1) - y)


@dataclass(frozen=True)
class MeanSquaredError(_Head):
    """The quadratic cost C = 1/(2n) sum_n ||a_n - y_n||^2 (Nielsen's eq. 6); labels of a's shape."""

    def forward(self, logits, labels, mask=None):
        _check_logits(self, logits)
        check_array(self, labels, what="labels")
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(
                f"{self.name}: expected labels of the outputs' shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        y = labels.astype(logits.dtype)
        w = _weights(self, logits, mask, logits.shape[:-1])
        r = logits - y
        value = 0.5 * jnp.sum(w * jnp.sum(r * r, axis=-1))
        return value, (r, w)

    def backward(self, cache):
        """dC/da_n = w_n (a_n - y_n) = (a - y)/n  (BP1 with grad_a C = (a - y)/n)."""
        r, w = cache
        return w[..., None] * r
