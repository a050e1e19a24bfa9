"""Running statistics of every BatchNorm inside a model, keyed by the layer's path (as reports name it).

A model's running statistics are one dict: {"1": {"mean": (C,), "var": (C,)},
"3/block/1": {...}} for the BatchNorms at those paths ({} for a model without
any; a bare BatchNorm's are its own {"mean", "var"}). Every container has
``update_stats(stats, cache)`` (a pure step from a training forward's cache,
which ``train`` takes at every step) and ``forward_eval(params, stats, x)``
(evaluation mode, any batch size, which ``train``'s test metric uses); the
functions here are the same for any model.
"""

from __future__ import annotations

from manualbp.layers.base import children_of, forward_eval_of, update_stats_of
from manualbp.layers.norm import BatchNorm


def _batchnorms(layer, params, path=""):
    if isinstance(layer, BatchNorm):
        yield path, layer, params
    elif children_of(layer):
        for (name, child), p in zip(children_of(layer), layer.split_params(params), strict=True):
            yield from _batchnorms(child, p, f"{path}/{name}" if path else name)


def init_running_stats(model, params) -> dict:
    """{path: {"mean": zeros (C,), "var": ones (C,)}} for every BatchNorm in ``model`` ({} when there is none)."""
    stats = {path: bn.init_stats(p["gamma"].shape, p["gamma"].dtype) for path, bn, p in _batchnorms(model, params)}
    return stats.get("", stats)  # a bare BatchNorm keeps its own {"mean", "var"}


def update_running_stats(model, params, stats, x) -> dict:
    """One pure EMA step of every BatchNorm's running statistics from a training-mode forward pass on ``x``."""
    _, cache = model.forward(params, x)
    return update_stats_of(model, stats, cache)


def forward_eval(model, params, stats, x):
    """The model's output with every BatchNorm in evaluation mode (running ``stats``); any batch size."""
    return forward_eval_of(model, params, stats, x)
