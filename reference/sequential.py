"""Reference containers: each child applied with its own taps; in evaluation mode, with its own running statistics."""

import manualbp.layers as mbp
from manualbp.layers.base import child_stats, with_child_stats

from .dispatch import apply, forward, forward_eval, forward_train


@forward.register
def _(layer: mbp.Sequential, params, x, taps):
    for i, (child, p) in enumerate(zip(layer.layers, params)):
        x = apply(child, p, x, taps.child(str(i)))
    return x


@forward.register
def _(layer: mbp.Parallel, params, x, taps):
    return tuple(apply(child, p, x, taps.child(str(i))) for i, (child, p) in enumerate(zip(layer.layers, params)))


@forward_eval.register
def _(layer: mbp.Sequential, params, stats, x):
    for i, (child, p) in enumerate(zip(layer.layers, params)):
        x = forward_eval(child, p, child_stats(stats, str(i), child), x)
    return x


@forward_eval.register
def _(layer: mbp.Parallel, params, stats, x):
    return tuple(forward_eval(child, p, child_stats(stats, str(i), child), x)
                 for i, (child, p) in enumerate(zip(layer.layers, params)))


@forward_train.register
def _(layer: mbp.Sequential, params, stats, x):
    new = {}
    for i, (child, p) in enumerate(zip(layer.layers, params)):
        x, s = forward_train(child, p, child_stats(stats, str(i), child), x)
        with_child_stats(new, str(i), child, s)
    return x, new


@forward_train.register
def _(layer: mbp.Parallel, params, stats, x):
    new, ys = {}, []
    for i, (child, p) in enumerate(zip(layer.layers, params)):
        y, s = forward_train(child, p, child_stats(stats, str(i), child), x)
        ys.append(y)
        with_child_stats(new, str(i), child, s)
    return tuple(ys), new
