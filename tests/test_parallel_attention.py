"""ParallelAttention (heads split across the model axis) in the main process: one device, and bad parameters.

Its collectives act only on several devices: the multi-device comparisons and its mutant run in
tests/test_tensor_parallel.py's 8-device subprocess.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import one_device_mesh

import manualbp as mbp


def test_one_device_and_the_whole_layer_agree():
    """On a 1 x 1 mesh every collective is the identity: the layer computes what MultiHeadAttention does."""
    mesh = one_device_mesh()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4)), jnp.float32)
    attn = mbp.ParallelAttention(2, mesh, causal=True)
    params, _ = attn.init(jax.random.key(0), (3, 4))
    y, _ = attn.forward(params, x)
    want, _ = mbp.MultiHeadAttention(2, causal=True).forward(params, x)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_a_wrong_parameter_is_named_before_any_collective():
    attn = mbp.ParallelAttention(2, one_device_mesh())
    params, _ = attn.init(jax.random.key(0), (3, 4))
    with pytest.raises(ValueError, match=r"ParallelAttention: expected parameter Wo of shape \(4, 4\)"):
        attn.forward({**params, "Wo": jnp.ones((4, 5), jnp.float32)}, jnp.ones((2, 3, 4), jnp.float32))
