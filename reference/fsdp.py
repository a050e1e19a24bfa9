"""Reference FSDPDense: the unsharded y = x W + b (the parameters' layout across devices changes nothing)."""

import manualbp.layers as mbp

from .dense import affine
from .dispatch import forward


@forward.register
def _(layer: mbp.FSDPDense, params, x, taps):
    return affine(x, params["W"], params["b"] if layer.use_bias else None)
