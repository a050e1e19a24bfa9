"""Dispatch of reference forwards, and the zero "taps" that expose every dL/dy.

``forward(layer, params, x, taps)`` is a ``functools.singledispatch``
function; each file of this package registers the forward of the manualbp
layer type it mirrors. ``apply`` adds a tap to a layer's input and output.

A tap is a zero array added to an intermediate value. The value is
unchanged, but the gradient of the loss with respect to the zero is exactly
dL/d(value): Nielsen's "demon" nudging z. Differentiating with respect to
all taps at once gives every layer's upstream and input gradient from one
``jax.grad`` call.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


class Taps:
    """Zero perturbations keyed by "<path>|<kind>".

    In record mode (``values=None``) a tap records a zero array of the
    value's shape and the value itself (the forward output), and returns the
    value unchanged. In apply mode it returns value + values[key].
    """

    def __init__(self, values=None, path="", zeros=None, outputs=None):
        self.values, self.path = values, path
        self.zeros = {} if zeros is None else zeros
        self.outputs = {} if outputs is None else outputs

    def child(self, name: str) -> Taps:
        path = f"{self.path}/{name}" if self.path else name
        return Taps(self.values, path, self.zeros, self.outputs)

    def perturbation(self, kind: str, shape, dtype):
        """The tap array itself (zeros when recording), for layers that add it inside a loop."""
        key = f"{self.path}|{kind}"
        if self.values is None:
            self.zeros[key] = jnp.zeros(shape, dtype)
            return self.zeros[key]
        return self.values[key]

    def tap(self, kind: str, value):
        """value + tap on every floating leaf (tuple members get kind ".0", ".1", ...).

        Integer arrays (token ids) are not tapped: they have no gradient.
        """
        if isinstance(value, (tuple, list)):
            return type(value)(self.tap(f"{kind}.{i}", v) for i, v in enumerate(value))
        if not jnp.issubdtype(value.dtype, jnp.floating):
            return value
        if self.values is None:
            self.outputs[f"{self.path}|{kind}"] = value
        return value + self.perturbation(kind, value.shape, value.dtype)


class NoTaps(Taps):
    """Taps that are not there: for plain training and value_and_grad."""

    def child(self, name: str) -> NoTaps:
        return self

    def perturbation(self, kind, shape, dtype):
        return jnp.zeros(shape, dtype)  # XLA folds the add of a constant zero away

    def tap(self, kind, value):
        return value


@functools.singledispatch
def forward(layer, params, x, taps):
    """The reference forward of ``layer``; one registration per manualbp layer type."""
    raise NotImplementedError(
        f"reference: no reference forward for {type(layer).__name__}; register one with "
        f"mbp.register_reference({type(layer).__name__}, fn) (fn(layer, params, x) -> y, written with library ops), "
        "or pass reference=fn to check_layer"
    )


def apply(layer, params, x, taps=None):
    """forward(layer, ...) with zero taps on its input ("in") and output ("out")."""
    taps = NoTaps() if taps is None else taps
    y = forward(layer, params, taps.tap("in", x), taps)
    return taps.tap("out", y)


@functools.singledispatch
def forward_eval(layer, params, stats, x):
    """Evaluation-mode reference forward with running ``stats``; for a layer without any, its training forward."""
    del stats
    return apply(layer, params, x)


@functools.singledispatch
def forward_train(layer, params, stats, x):
    """(training-mode output, running statistics advanced by this batch); a layer without any keeps ``stats``."""
    return apply(layer, params, x), stats


@functools.singledispatch
def head_forward(head, logits, labels, mask=None):
    """The reference loss value of ``head``; one registration per head type."""
    raise NotImplementedError(f"reference: no reference loss for {type(head).__name__}")


def masked_mean(per_example, mask):
    """Mean over all axes, or the mask-weighted mean sum(m l) / sum(m); NaN if an entry of m is negative or not finite."""
    if mask is None:
        return jnp.mean(per_example)
    m = jnp.asarray(mask).astype(per_example.dtype)
    m = jnp.where((m >= 0) & (m < jnp.inf), m, jnp.nan)
    return jnp.sum(m * per_example) / jnp.sum(m)
