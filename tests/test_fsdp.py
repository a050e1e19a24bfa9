"""FSDPDense (parameters sharded ZeRO-3 style) in the main process: one device, and bad hyperparameters.

Its all-gather and reduce-scatter act only on several devices: the multi-device comparisons and its mutant run
in tests/test_tensor_parallel.py's 8-device subprocess.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host, one_device_mesh

import manualbp as mbp
from manualbp.verify.verdict import judge


def test_one_device_and_dense_agree():
    """On a 1 x 1 mesh the gather and the reduce-scatter are the identity: forward and backward are Dense's."""
    layer, dense = mbp.FSDPDense(3, one_device_mesh()), mbp.Dense(3)
    params, _ = dense.init(jax.random.key(0), (4,), jnp.float64)
    x, dy = host(np.random.default_rng(0).standard_normal((5, 4))), host(np.random.default_rng(1).standard_normal((5, 3)))
    (y, cache), (want, want_cache) = layer.forward(params, x), dense.forward(params, x)
    tol = mbp.tolerance(jnp.float64)
    assert judge("FSDPDense", "y", y, want, tol).ok
    (g, dx), (g_want, dx_want) = layer.backward(params, cache, dy), dense.backward(params, want_cache, dy)
    assert judge("FSDPDense", "dx", dx, dx_want, tol).ok
    for k in ("W", "b"):
        assert judge("FSDPDense", k, g[k], g_want[k], tol).ok


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="FSDPDense: features must be a positive int, got 0"):
        mbp.FSDPDense(0, one_device_mesh())
