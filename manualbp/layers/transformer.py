"""The pre-norm transformer block (GPT-2's), as a container whose sub-layers compare names one by one."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.activations import GELU
from manualbp.layers.attention import MultiHeadAttention
from manualbp.layers.base import Layer, check_array, check_positive_int
from manualbp.layers.dense import Dense
from manualbp.layers.dropout import Dropout
from manualbp.layers.norm import LayerNorm

# the two residual branches, by child name: y1 = x + attention branch(x), y = y1 + MLP branch(y1)
_BRANCHES = (("ln1", "attn", "drop1"), ("ln2", "fc1", "gelu", "fc2", "drop2"))


@dataclass(frozen=True, init=False)
class TransformerBlock(Layer):
    """Pre-norm block: y1 = x + Drop(MHA(LN1(x))), y = y1 + Drop(W2 GELU(W1 LN2(y1) + b1) + b2).

    Args (of the constructor):
      features: D, the width of x and y.
      num_heads: heads of the self-attention (D divisible by it).
      hidden: width of the MLP (default 4 D).
      causal: causal self-attention (a decoder block, as GPT's).
      dropout: rate of the two Dropouts on the branches' outputs (0: none; the
        children ``drop1``/``drop2`` are then left out).
      epsilon: the LayerNorms' epsilon.
      block_size: the attention's query rows per block (None: automatic).
      kernel: the attention's kernel ("auto", "loop", "batched", "pallas": ``MultiHeadAttention``).

    Input x (B, T, D); output (B, T, D). Children, in order: ``ln1``,
    ``attn``, [``drop1``], ``ln2``, ``fc1``, ``gelu``, ``fc2``, [``drop2``];
    params are a dict keyed by those names, so a report's rows read e.g.
    "2/attn MultiHeadAttention dWq" and "2/fc1 Dense dW".

    The backward is two residual add nodes (dx = dy + the branch's dx, as in
    ``Residual``) around the children's own backward passes, run in reverse.
    """

    parts: tuple  # ((name, layer), ...)

    def __init__(self, features: int, num_heads: int, *, hidden: int | None = None, causal: bool = False,
                 dropout: float = 0.0, epsilon: float = 1e-5, block_size: int | None = None, kernel: str = "auto"):
        check_positive_int("TransformerBlock", "features", features)
        hidden = 4 * features if hidden is None else hidden
        try:  # each child checks its own hyperparameters; the message says they came through this block
            attn = MultiHeadAttention(num_heads, causal=causal, block_size=block_size, kernel=kernel)
            attn._dh(features)  # features not divisible by num_heads: say so now, not at the first forward
            drop = Dropout(dropout)
            parts = [("ln1", LayerNorm(epsilon)), ("attn", attn), ("drop1", drop), ("ln2", LayerNorm(epsilon)),
                     ("fc1", Dense(hidden)), ("gelu", GELU()), ("fc2", Dense(features)), ("drop2", drop)]
        except (TypeError, ValueError) as e:
            raise type(e)(f"TransformerBlock: {e}") from None
        object.__setattr__(self, "parts", tuple((n, layer) for n, layer in parts if dropout > 0 or n[:4] != "drop"))

    @classmethod
    def from_parts(cls, parts):
        """A block with the given ((name, layer), ...) children (used by ``replace_children``)."""
        block = object.__new__(cls)
        object.__setattr__(block, "parts", tuple(parts))
        return block

    @property
    def children(self):
        return self.parts

    def split_params(self, params):
        names = [n for n, _ in self.parts]
        if not isinstance(params, dict) or sorted(params) != sorted(names):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"TransformerBlock: expected params as a dict with keys {sorted(names)}, got {got}; "
                             "the params tree does not match the model")
        return tuple(params[n] for n in names)

    def replace_children(self, layers):
        return TransformerBlock.from_parts(zip([n for n, _ in self.parts], layers))

    def _branches(self):
        layers = dict(self.parts)
        return [[(n, layers[n]) for n in branch if n in layers] for branch in _BRANCHES]

    def init(self, key, input_shape, dtype=jnp.float32):
        if len(input_shape) != 2:
            raise ValueError(f"TransformerBlock: expected an input shape (T, D) (batch excluded), got {tuple(input_shape)}")
        params = {}
        keys = dict(zip([n for n, _ in self.parts], jax.random.split(key, len(self.parts))))
        shape = tuple(input_shape)
        for branch in self._branches():
            h = shape
            for n, layer in branch:
                params[n], h = layer.init(keys[n], h, dtype)
            if h != shape:
                raise ValueError(f"TransformerBlock: input shape {shape} does not match features = {h[-1]}")
        return params, shape

    def forward(self, params, x):
        """x: (B, T, D) -> y: (B, T, D); cache: every child's cache, by name."""
        check_array(self, x, ndim=3)
        self.split_params(params)
        caches = {}
        for branch in self._branches():
            h = x
            for n, layer in branch:
                h, caches[n] = layer.forward(params[n], h)
            if h.shape != x.shape:
                raise ValueError(f"TransformerBlock: x of shape {tuple(x.shape)} does not match the block's features "
                                 f"(its MLP returns {tuple(h.shape)})")
            x = x + h
        return x, caches

    def kink_pattern(self, cache):
        """Every child's discrete choices, by name (None for a child that declares none)."""
        return {n: layer.kink_pattern(cache[n]) if getattr(layer, "kink_pattern", None) else None
                for n, layer in self.parts}

    def backward(self, params, cache, dy):
        """Each branch in reverse: dx = dy + (branch backward)(dy) (the identity path), children's rules inside.

        .. math::
            dy_1 = dy + J_{\\mathrm{mlp}}^T dy, \\qquad dx = dy_1 + J_{\\mathrm{attn}}^T dy_1

        dy: (B, T, D); returns ({name: dparams}, dx (B, T, D)).
        """
        grads = {}
        for branch in reversed(self._branches()):
            d = dy
            for n, layer in reversed(branch):
                grads[n], d = layer.backward(params[n], cache[n], d)
            dy = dy + d
        return grads, dy
