"""Reference MultiHeadAttention: the textbook forward, all heads at once, jax.nn.softmax with ``where``.

Everything the manual layer avoids: the full (B, heads, T, S) scores and
probabilities, a boolean matrix of allowed pairs, the division by sqrt(dh)
applied to the scores. A query row with no allowed key is given O = 0 (the
documented convention) by a ``where`` on the output, after a softmax over a
row made harmless (all keys allowed) so that no NaN enters the gradient.
"""

import math

import jax
import jax.numpy as jnp

import manualbp.layers as mbp

from .dispatch import forward


def _linear(use_bias, params, a, w, b):
    y = jnp.einsum("bti,io->bto", a, params[w])
    return y + jnp.broadcast_to(params[b], y.shape) if use_bias and b is not None else y


def attention(params, x, c, mask, *, num_heads, causal, use_bias):
    """The textbook multi-head attention of queries from x (B, T, D) over keys and values from c (B, S, Dc)."""
    B, T, D = x.shape
    S = c.shape[1]
    H = num_heads
    q = _linear(use_bias, params, x, "Wq", "bq").reshape(B, T, H, -1)
    k = _linear(use_bias, params, c, "Wk", None).reshape(B, S, H, -1)
    v = _linear(use_bias, params, c, "Wv", "bv").reshape(B, S, H, -1)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    allowed = jnp.ones((B, H, T, S), bool)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((T, S), bool))[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    has_key = jnp.any(allowed, axis=-1, keepdims=True)
    probs = jax.nn.softmax(logits, axis=-1, where=allowed | ~has_key)
    probs = jnp.where(has_key, probs, 0)
    o = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, -1)
    return _linear(use_bias, params, o, "Wo", "bo")


@forward.register
def _(layer: mbp.MultiHeadAttention, params, inputs, taps):
    parts = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    x = parts[0]
    c = parts[1] if layer.cross else x
    mask = parts[-1] if layer.key_mask else None
    return attention(params, x, c, mask, num_heads=layer.num_heads, causal=layer.causal, use_bias=layer.use_bias)
