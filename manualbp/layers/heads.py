"""Loss heads: forward(logits, labels, mask=None) -> (value, cache); backward(cache) -> dlogits.

Every head is mean-reduced over the examples, i.e. every axis but the last
(batch, and time for sequences): the total loss is an average of
per-example losses, C = (1/n) sum_x C_x, so the gradient is the average of
per-example gradients, dC/dw = (1/n) sum_x dC_x/dw (Nielsen, ch. 2). An
optional ``mask`` of shape ``logits.shape[:-1]`` (1 = real, 0 = padding, any
finite weights >= 0) turns the mean into a weighted mean over the real
examples: weights w_n = m_n / sum(m).

Invalid values (a label out of range, a negative or non-finite mask entry,
an all-zero mask) raise a ValueError where the values are concrete. Under
``jax.jit`` they cannot be inspected: there the loss is NaN and so is the
gradient of every row holding an invalid label (all rows for an invalid
mask), never a plausible number; within ``base.checkify_values()`` and under
``jax.experimental.checkify`` they are an error instead. ``manualbp.reference`` computes the same NaNs.
``check_values`` runs every check of ``forward`` without computing the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.activations import sigmoid_pair
from manualbp.layers.base import as_index, check_array, check_values, describe


def _as_array(head, what, v):
    """``v`` as a jax array (a Python list or numpy array is converted); None stays None."""
    if v is None or isinstance(v, jax.Array):
        return v
    try:
        return jnp.asarray(v)
    except (TypeError, ValueError):
        raise TypeError(f"{head.name}: expected {what} as an array of numbers, got {type(v).__name__}") from None


def _as_labels(head, labels):
    """The labels as a jax array; None (a head always needs them) is a TypeError naming the head."""
    if labels is None:
        raise TypeError(f"{head.name}: expected labels as an array of numbers, got None")
    return _as_array(head, "labels", labels)


def _not_finite(v):
    return ~(abs(v) < np.inf)  # NaN and +-Inf; numpy and jax arrays alike


def _check_logits(head, logits):
    check_array(head, logits, what="logits")
    if math.prod(logits.shape[:-1]) == 0:
        raise ValueError(f"{head.name}: expected at least one example, got logits of shape {tuple(logits.shape)}")


def _check_mask(head, mask, per_example_shape):
    """(mask, bad): the mask checked against the examples' shape; bad entries raise, or come back to be made NaN."""
    mask = _as_array(head, "mask", mask)
    if mask is None:
        return None, None
    if tuple(mask.shape) != tuple(per_example_shape):
        raise ValueError(
            f"{head.name}: expected mask of shape {tuple(per_example_shape)} (logits' shape without "
            f"the last axis), got {tuple(mask.shape)}"
        )
    if not (jnp.issubdtype(mask.dtype, jnp.floating) or jnp.issubdtype(mask.dtype, jnp.integer)
            or mask.dtype == jnp.bool_):
        raise TypeError(f"{head.name}: expected a mask of real numbers or bools (weights >= 0), got {describe(mask)}")
    bad = check_values(head.name, "mask entries must be finite and >= 0 (1 = real, 0 = padding)", mask,
                       lambda v: ~((v >= 0) & (v < np.inf)))
    check_values(head.name, "the mask selects no example (all zeros)", mask, lambda v: ~(v != 0).any())
    return mask, bad


def _weights(logits, mask, bad):
    """w_n = 1/N, or m_n / sum(m) under a mask (NaN everywhere if a mask entry is invalid); logits.shape[:-1]."""
    shape = logits.shape[:-1]
    if mask is None:
        return jnp.full(shape, 1.0 / math.prod(shape), logits.dtype)
    m = mask.astype(logits.dtype)
    if bad is not None:
        m = jnp.where(bad, jnp.nan, m)
    return m / jnp.sum(m)


class _Head:
    @property
    def name(self):
        return type(self).__name__

    def check_values(self, logits, labels, mask=None):
        """Every check ``forward`` makes (shapes, dtypes, values), without computing the loss.

        ``logits`` may be a ``jax.ShapeDtypeStruct``: only its shape and dtype are read.
        """
        self._inputs(logits, labels, mask)


@dataclass(frozen=True)
class SoftmaxCrossEntropy(_Head):
    """L = sum_n w_n ( -sum_i c_ni log softmax(z_n)_i ), c = one-hot(label) or any target rows.

    labels: integers of shape logits.shape[:-1] in [0, C), or floats of
    logits' shape: probability rows, or any finite rows (a row summing to
    0.5, 2 or 0 is allowed, e.g. a zero row as padding; its gradient is the
    general rule of ``backward``).
    """

    def _inputs(self, logits, labels, mask):
        _check_logits(self, logits)
        C = logits.shape[-1]
        if C == 0:
            raise ValueError(f"{self.name}: expected at least one class, got logits of shape {tuple(logits.shape)}")
        labels = _as_labels(self, labels)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            if tuple(labels.shape) != tuple(logits.shape[:-1]):
                raise ValueError(
                    f"{self.name}: expected integer labels of shape {tuple(logits.shape[:-1])} "
                    f"for logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
                )
            bad = check_values(self.name, f"labels must lie in [0, {C}) for {C} classes", labels,
                               lambda v: (v < 0) | (v >= C))
        elif jnp.issubdtype(labels.dtype, jnp.floating):
            if tuple(labels.shape) != tuple(logits.shape):
                raise TypeError(
                    f"{self.name}: float labels must be targets of logits' shape {tuple(logits.shape)}, "
                    f"got {describe(labels)}; pass integer class ids of shape {tuple(logits.shape[:-1])} "
                    "or one-hot/probability rows"
                )
            check_values(self.name, "target rows must be finite", labels, _not_finite)
            bad = None  # a NaN/Inf target makes its row's loss and gradient non-finite by itself
        else:
            raise TypeError(f"{self.name}: labels must be integers or floats, got {describe(labels)}")
        return (labels, bad, *_check_mask(self, mask, logits.shape[:-1]))

    def forward(self, logits, labels, mask=None):
        labels, bad, mask, bad_mask = self._inputs(logits, labels, mask)
        C = logits.shape[-1]
        w = _weights(logits, mask, bad_mask)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            ids = as_index(labels)  # uint8 labels against C = 300 classes must not wrap
            target = (ids[..., None] == jnp.arange(C, dtype=ids.dtype).reshape((1,) * ids.ndim + (C,))).astype(logits.dtype)
            if bad is not None:  # traced: an invalid label makes its row NaN (no plausible loss, no wrong gradient)
                target = jnp.where(bad[..., None], jnp.nan, target)
            total = None  # every one-hot row sums to 1
        else:
            target = labels.astype(logits.dtype)
            total = jnp.sum(target, axis=-1, keepdims=True)
        # max-subtracted log-softmax: no overflow of e^z, loss within ~1 ulp of optax's
        shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
        log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
        value = -jnp.sum(w * jnp.sum(target * log_p, axis=-1))
        return value, (jnp.exp(log_p), target, w, total)

    def backward(self, cache):
        """dL/dz_n = w_n (softmax(z_n) sum_i c_ni - c_n); = w_n (softmax(z_n) - c_n) when the row sums to 1.

        .. math::
            \\partial L/\\partial z_{nj} = w_n \\Big(p_{nj} \\sum_i c_{ni} - c_{nj}\\Big),
            \\quad p_n = \\mathrm{softmax}(z_n)

        since -sum_i c_i log p_i = -sum_i c_i z_i + (sum_i c_i) logsumexp(z). For
        a one-hot or probability row sum_i c_i = 1 (the familiar p - c; / N for
        the mean); a zero padding row gets 0. Shapes: p, c (..., C), w (...,).
        """
        p, target, w, total = cache
        if total is None:
            return w[..., None] * (p - target)
        return w[..., None] * (p * total - target)


@dataclass(frozen=True)
class SigmoidBinaryCrossEntropy(_Head):
    """L = sum_n w_n sum_i [ -y log s(z) - (1-y) log(1-s(z)) ], s = sigmoid; y in [0, 1], logits' shape.

    Computed in the stable form max(z, 0) - z y + log(1 + e^-|z|). A 2-class
    softmax over [z, 0] is exactly this sigmoid head. Labels outside [0, 1]
    (2.0, -1, NaN) raise where concrete, and are NaN under ``jax.jit``.
    """

    def _inputs(self, logits, labels, mask):
        _check_logits(self, logits)
        labels = _as_labels(self, labels)
        if not jnp.issubdtype(labels.dtype, jnp.floating) and not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(f"{self.name}: labels must be numbers in [0, 1], got {describe(labels)}")
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(
                f"{self.name}: expected labels of logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        bad = check_values(self.name, "labels must lie in [0, 1]", labels, lambda v: ~((v >= 0) & (v <= 1)))
        return (labels, bad, *_check_mask(self, mask, logits.shape[:-1]))

    def forward(self, logits, labels, mask=None):
        labels, bad, mask, bad_mask = self._inputs(logits, labels, mask)
        y = labels.astype(logits.dtype)
        if bad is not None:
            y = jnp.where(bad, jnp.nan, y)
        w = _weights(logits, mask, bad_mask)
        z = logits
        per = jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))
        value = jnp.sum(w * jnp.sum(per, axis=-1))
        return value, (z, y, w)

    def backward(self, cache):
        """dL/dz_n = w_n (sigmoid(z_n) - y_n), computed as w_n ((1 - y_n) s(z_n) - y_n s(-z_n)).

        .. math::
            \\partial L/\\partial z = w\\,\\big((1 - y)\\,\\sigma(z) - y\\,\\sigma(-z)\\big) = w\\,(\\sigma(z) - y)

        The two forms are equal (s(z) + s(-z) = 1), but s(z) - y cancels: a
        confident right answer (y = 1, z = 30) has the gradient -s(-30) = -9.4e-14,
        which 1 - s(30) rounds away. s(z) and s(-z) come from one e^-|z|, each to
        full relative precision. Shapes: z, y (..., C), w (...,).
        """
        z, y, w = cache
        s_pos, s_neg = sigmoid_pair(z)
        return w[..., None] * ((1 - y) * s_pos - y * s_neg)


@dataclass(frozen=True)
class MeanSquaredError(_Head):
    """The quadratic cost C = 1/(2n) sum_n ||a_n - y_n||^2 (Nielsen's eq. 6); labels of a's shape."""

    def _inputs(self, logits, labels, mask):
        _check_logits(self, logits)
        labels = _as_labels(self, labels)
        check_array(self, labels, what="labels")
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(
                f"{self.name}: expected labels of the outputs' shape {tuple(logits.shape)}, got {tuple(labels.shape)}"
            )
        check_values(self.name, "labels must be finite", labels, _not_finite)
        return (labels, *_check_mask(self, mask, logits.shape[:-1]))

    def forward(self, logits, labels, mask=None):
        labels, mask, bad_mask = self._inputs(logits, labels, mask)
        y = labels.astype(logits.dtype)
        w = _weights(logits, mask, bad_mask)
        r = logits - y
        value = 0.5 * jnp.sum(w * jnp.sum(r * r, axis=-1))
        return value, (r, w)

    def backward(self, cache):
        """dC/da_n = w_n (a_n - y_n) = (a - y)/n  (BP1 with grad_a C = (a - y)/n)."""
        r, w = cache
        return w[..., None] * r
