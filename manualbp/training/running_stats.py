"""Running statistics of every BatchNorm inside a model, keyed by the layer's path (as reports name it).

``BatchNorm`` itself keeps its running statistics outside the params
(``init_stats`` / ``update_stats`` / ``forward_eval``); these functions do the
same for a whole model by swapping each BatchNorm for a stand-in whose
forward updates or uses the statistics of its path.
"""

from __future__ import annotations

from manualbp.layers.base import children_of
from manualbp.layers.norm import BatchNorm


class _Stand:
    """Stands in for a BatchNorm inside a model, running ``fn`` as its forward (containers see a plain layer)."""

    children = ()

    def __init__(self, bn, fn):
        self.bn, self.fn, self.name = bn, fn, bn.name

    def forward(self, params, x):
        return self.fn(params, x)

    def backward(self, params, cache, dy):
        return self.bn.backward(params, cache, dy)


def _swap(layer, make, path=""):
    """``layer`` with every BatchNorm at path p replaced by ``make(p, bn)``."""
    if isinstance(layer, BatchNorm):
        return make(path, layer)
    if children_of(layer):
        return layer.replace_children([_swap(c, make, f"{path}/{n}" if path else n) for n, c in children_of(layer)])
    return layer


def _batchnorm_params(layer, params, path=""):
    if isinstance(layer, BatchNorm):
        yield path, layer, params
    elif children_of(layer):
        for (name, child), p in zip(children_of(layer), layer.split_params(params), strict=True):
            yield from _batchnorm_params(child, p, f"{path}/{name}" if path else name)


def init_running_stats(model, params) -> dict:
    """{path: {"mean": zeros (C,), "var": ones (C,)}} for every BatchNorm in ``model`` ("" if it is the model)."""
    return {path: bn.init_stats(p["gamma"].shape, p["gamma"].dtype) for path, bn, p in _batchnorm_params(model, params)}


def update_running_stats(model, params, stats, x) -> dict:
    """One pure EMA step of every BatchNorm's running statistics from a training-mode forward pass on ``x``.

    Runs the model's forward once more (with batch statistics, exactly as in
    training) and returns the new ``stats``; params and gradients are untouched.
    """
    new = {}

    def make(path, bn):
        def forward(p, x):
            y, cache = bn.forward(p, x)
            new[path] = bn.update_stats(stats[path], cache)
            return y, cache

        return _Stand(bn, forward)

    _swap(model, make).forward(params, x)
    return new


def forward_eval(model, params, stats, x):
    """The model's output with every BatchNorm in evaluation mode (running ``stats``); any batch size."""

    def make(path, bn):
        return _Stand(bn, lambda p, x: (bn.forward_eval(p, stats[path], x), None))

    return _swap(model, make).forward(params, x)[0]
