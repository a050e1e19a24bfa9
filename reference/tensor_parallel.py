"""Reference Column- and RowParallelDense: the unsharded y = x W + b (how many devices share W changes nothing)."""

import manualbp.layers as mbp

from .dense import affine
from .dispatch import forward


@forward.register
def _(layer: mbp.ColumnParallelDense, params, x, taps):
    return affine(x, params["W"], params["b"] if layer.use_bias else None)


@forward.register
def _(layer: mbp.RowParallelDense, params, x, taps):
    return affine(x, params["W"], params["b"] if layer.use_bias else None)
