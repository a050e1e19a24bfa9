"""Reference containers: each child applied with its own taps."""

import manualbp.layers as mbp

from .dispatch import apply, forward


@forward.register
def _(layer: mbp.Sequential, params, x, taps):
    for i, (child, p) in enumerate(zip(layer.layers, params)):
        x = apply(child, p, x, taps.child(str(i)))
    return x


@forward.register
def _(layer: mbp.Parallel, params, x, taps):
    return tuple(apply(child, p, x, taps.child(str(i))) for i, (child, p) in enumerate(zip(layer.layers, params)))
