"""Every shape a window layer's forward accepts has a working backward: degenerate Conv2D and pool geometries.

Width 1, padding >= kernel, stride beyond the input, dilation past the edge: XLA CPU's simplifier once
turned the transposed convolution of such a Conv2D backward into an invalid one and aborted the process
(``Conv2D(5, 2, stride=2, padding=1)`` on x of shape (4, 6, 1, 5)); each case here is checked against the
reference, under jit (where XLA's rewrites run).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp

CONV = [  # (layer, x shape (N, H, W, C))
    (mbp.Conv2D(5, 2, stride=2, padding=1, use_bias=False), (4, 6, 1, 5)),  # the reported abort
    (mbp.Conv2D(2, 3, stride=1, padding=3), (1, 1, 1, 2)),  # padding >= kernel on a 1x1 input
    (mbp.Conv2D(2, 2, stride=2, padding=((0, 3), (3, 0))), (2, 3, 2, 1)),
    (mbp.Conv2D(2, (3, 1), stride=(4, 1), padding="SAME"), (2, 3, 4, 2)),  # stride > input
    (mbp.Conv2D(2, (1, 3), stride=(1, 3), padding=((0, 0), (2, 2)), dilation=2), (1, 2, 1, 3)),
    (mbp.Conv2D(2, 2, stride=3, padding="VALID", dilation=(2, 1)), (2, 5, 2, 1)),
    (mbp.Conv2D(3, 3, stride=2, padding=2, dilation=2), (1, 1, 3, 4)),  # im2col dW path, all taps but one in padding
    (mbp.Conv2D(3, 3, stride=2, padding=2), (2, 1, 5, 8)),  # kh kw C = 72: the convolution dW path
    (mbp.Conv2D(2, (2, 3), stride=(2, 1), padding=((1, 1), (2, 2))), (2, 4, 1, 6)),
    (mbp.Conv2D(2, 1, stride=2, padding=((3, 1), (0, 2))), (1, 5, 4, 5)),
]

POOL = [
    (mbp.MaxPool2D(3, 1, "SAME"), (2, 1, 1, 2)),
    (mbp.MaxPool2D((2, 1), (3, 3)), (1, 2, 1, 2)),
    (mbp.MaxPool2D((1, 3), (3, 3), "SAME"), (1, 3, 4, 2)),
    (mbp.MaxPool2D(2, (4, 2), "SAME"), (2, 3, 5, 1)),
    (mbp.AvgPool2D(3, 4, "SAME"), (1, 2, 1, 2)),
    (mbp.AvgPool2D((1, 1), (1, 4), "SAME"), (1, 1, 3, 2)),
    (mbp.AvgPool2D((2, 3), None, "SAME"), (2, 1, 2, 1)),
]


@pytest.mark.parametrize("layer, shape", CONV + POOL, ids=[f"{layer!r}-{shape}" for layer, shape in CONV + POOL])
def test_degenerate_geometry_backward_matches_the_reference(layer, shape):
    params, _ = layer.init(jax.random.key(0), shape[1:], jnp.float64)
    x = host(np.random.default_rng(1).standard_normal(shape), jnp.float64)
    report = mbp.check_layer(layer, params, x, jit=True)
    assert report.ok, str(report)


def test_the_reported_abort_case_in_float32_and_eagerly():
    layer, shape = CONV[0]
    params, _ = layer.init(jax.random.key(0), shape[1:], jnp.float32)
    x = host(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    assert mbp.check_layer(layer, params, x, jit=False).ok
    assert mbp.check_layer(layer, params, x, jit=True).ok
