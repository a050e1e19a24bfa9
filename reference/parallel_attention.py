"""Reference ParallelAttention: the textbook multi-head self-attention over all heads at once, on one device."""

import manualbp.layers as mbp

from .attention import attention
from .dispatch import forward


@forward.register
def _(layer: mbp.ParallelAttention, params, x, taps):
    return attention(params, x, x, None, num_heads=layer.num_heads, causal=layer.causal, use_bias=layer.use_bias)
