"""Record every layer's input, output, upstream and input gradient in a manual pass.

The model's layers are wrapped, at every depth, in a ``_Recorder`` that runs
the layer's own forward/backward unchanged and writes what passes through
into a dict keyed by the layer's path ("" is the model, "1/0" the first
child of the second child). The containers' own forward/backward run as
they are, over the wrapped children, so the record is of the real pass.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from manualbp.backprop import loss_and_grads
from manualbp.layers.base import children_of, name_of
from manualbp.layers.walk import label, walk

__all__ = ["label", "record", "walk", "wrap"]


def _zeros_for_missing(dx, x):
    """``dx`` with every None that stands for a floating input (leaf) of ``x`` replaced by zeros.

    A backward that leaves dL/dx out (returns None) is a failing "missing" row of the report (the record
    keeps the None), and the layers before it still get a gradient to run their own backward on.
    """
    if isinstance(x, (tuple, list)):
        if dx is None:
            dx = (None,) * len(x)
        if isinstance(dx, (tuple, list)) and len(dx) == len(x):
            return type(dx)(_zeros_for_missing(d, v) for d, v in zip(dx, x))
        return dx
    if dx is None and hasattr(x, "dtype") and np.issubdtype(np.dtype(x.dtype), np.floating):
        return jnp.zeros_like(x)
    return dx


class _Recorder:
    """The layer itself (its hyperparameters read through), with a forward and backward that record."""

    def __init__(self, layer, path, store):
        self.layer, self.path, self.store = layer, path, store
        self.name = name_of(layer)

    def __getattr__(self, name):  # only for what the recorder lacks: a Bidirectional reads return_sequences
        if name == "layer":
            raise AttributeError(name)
        return getattr(self.layer, name)

    def forward(self, params, x):
        y, cache = self.layer.forward(params, x)
        self.store.setdefault(self.path, {}).update(x=x, y=y)
        return y, cache

    def backward(self, params, cache, dy):
        entry = self.store.setdefault(self.path, {})
        if hasattr(self.layer, "backward_trace"):
            grads, dx, extras = self.layer.backward_trace(params, cache, dy)
            entry["extras"] = extras
        else:
            grads, dx = self.layer.backward(params, cache, dy)
        entry.update(dy=dy, dx=dx)
        return grads, _zeros_for_missing(dx, entry.get("x"))


def wrap(layer, store, path=""):
    """``layer`` with every layer inside it (and itself) recording into ``store``."""
    if children_of(layer):
        layer = layer.replace_children(
            [wrap(child, store, f"{path}/{name}" if path else name) for name, child in children_of(layer)]
        )
    return _Recorder(layer, path, store)


def record(model, head, params, x, y, mask=None):
    """Run one manual forward/backward; return (loss, grads, store)."""
    store: dict = {}
    loss, grads, _, _ = loss_and_grads(wrap(model, store), head, params, x, y, mask)
    return loss, grads, store
