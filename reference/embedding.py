"""Reference Embedding: one-hot(ids) @ E, a matmul jax.grad differentiates (not the manual gather).

The ids are widened to int32 (int64 for 64-bit ids) before ``one_hot``, which
would otherwise build ``arange(V)`` in the ids' own dtype (uint8 wraps at 256);
an id outside [0, V) gives a row of NaN and no gradient to E, the contract of
the manual layer under ``jax.jit``.
"""

import jax
import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


@forward.register
def _(layer: mbp.Embedding, params, x, taps):
    E = params["E"]
    V = E.shape[0]
    ids = x.astype(jnp.int64 if x.dtype.itemsize == 8 else jnp.int32)
    y = jnp.einsum("...v,vf->...f", jax.nn.one_hot(ids, V, dtype=E.dtype), E,
                   precision=jax.lax.Precision.HIGHEST)  # exact rows, also where matmuls default to lower precision
    return jnp.where(((ids >= 0) & (ids < V))[..., None], y, jnp.nan)
