"""Multi-head self-attention with its heads split across the mesh's "model" axis (Megatron's layout), and the block.

With H heads and n devices, device d holds heads d H/n .. (d+1) H/n - 1: the matching columns of
Wq, Wk, Wv (and of bq, bv) and rows of Wo. The heads are independent until the output
projection, whose sum over heads is a sum over devices:

    x_d = x                                      COPY (x replicated)
    O_d = attention of device d's heads          (``attention``: each device an ordinary
                                                  MultiHeadAttention with H/n heads)
    y   = sum_d O_d Wo_d + bo                    REDUCE (psum), bo added once

so the layer is a column-parallel projection (Q, K, V) and a row-parallel one (Wo) around
per-device attention, with the same two collectives as the MLP. The parameters are exactly a
``MultiHeadAttention``'s, whole arrays of the same shapes; ``param_specs`` lays them out.

``parallel_block`` builds GPT-2's pre-norm block from it and ``parallel_mlp``: the TransformerBlock
container with tensor-parallel children (LayerNorms and residual adds replicated).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from manualbp.layers.activations import GELU
from manualbp.layers.attention import MultiHeadAttention
from manualbp.layers.base import Layer, check_array, check_dy
from manualbp.layers.collectives import (
    BATCH,
    COPY,
    MODEL,
    REDUCE,
    activation,
    check_divisible,
    check_mesh,
    model_size,
    run,
    sum_over_batch,
)
from manualbp.layers.norm import LayerNorm
from manualbp.layers.tensor_parallel import ColumnParallelDense, RowParallelDense, add_bias
from manualbp.layers.transformer import TransformerBlock


class _Whole(MultiHeadAttention):
    """The whole layer, for its checks and init: a MultiHeadAttention whose messages name ParallelAttention."""

    name = "ParallelAttention"


_HEADS = P(BATCH, None, MODEL, None)  # (B, T, H, dh) split by heads
_HEADS_T = P(BATCH, MODEL, None, None)  # (B, H, S, dh)


@dataclass(frozen=True)
class ParallelAttention(Layer):
    """Causal or full multi-head self-attention, heads split across the "model" axis (module docstring).

    Attributes:
      num_heads: H, divisible by the model axis's size n (each device gets H/n heads).
      mesh: a ``jax.sharding.Mesh`` with axes ("batch", "model").
      causal: query i attends to keys j <= i only.
      use_bias: add bq, bv (split with their heads) and bo (whole, added once after the psum).
      block_size: query rows per block of the attention kernel (``MultiHeadAttention``'s).

    Input x (B, T, D), D divisible by H; output (B, T, D) replicated. Params: those of
    ``MultiHeadAttention(num_heads)``: Wq, Wk, Wv (D, D), Wo (D, D), bq, bv, bo (D,).
    Collectives: ``enter`` (COPY) on x, ``leave`` (REDUCE) on y.
    """

    num_heads: int
    mesh: Mesh
    causal: bool = False
    use_bias: bool = True
    block_size: int | None = None

    enter = COPY  # x used by every device's heads: identity forward, psum of dx backward
    leave = REDUCE  # the output projection's partial sums over heads: psum forward, identity backward

    def __post_init__(self):
        self._whole()  # num_heads, causal, use_bias, block_size checked as MultiHeadAttention checks them
        check_mesh(self.name, self.mesh)
        check_divisible(self.name, "num_heads", self.num_heads, self.mesh)

    def _whole(self) -> MultiHeadAttention:
        return _Whole(self.num_heads, causal=self.causal, use_bias=self.use_bias, block_size=self.block_size)

    def _local(self, D) -> MultiHeadAttention:
        """The attention one device runs: its H/n heads, of the whole layer's head size."""
        return MultiHeadAttention(self.num_heads // model_size(self.mesh), head_dim=self._whole()._dh(D),
                                  causal=self.causal, use_bias=self.use_bias, block_size=self.block_size)

    def param_specs(self) -> dict:
        cols, rows = P(None, MODEL), P(MODEL, None)
        specs = {"Wq": cols, "Wk": cols, "Wv": cols, "Wo": rows, "bq": P(MODEL), "bv": P(MODEL), "bo": P()}
        return {k: specs[k] for k in self._whole()._keys()}

    def init(self, key, input_shape, dtype=jnp.float32):
        return self._whole().init(key, input_shape, dtype)

    def output_shape(self, input_shape):
        return self._whole().output_shape(input_shape)

    def _per_device(self, params):
        """A device's params as its local MultiHeadAttention takes them: bo zero (added once, after the psum)."""
        return {**params, "bo": jnp.zeros_like(params["bo"])} if self.use_bias else params

    def forward(self, params, x):
        """x: (B, T, D) -> y: (B, T, D); cache: (x, Q / sqrt(dh), K^T, V^T, O), the last four split by heads."""
        check_array(self, x, ndim=3)
        self._whole()._unpack(params, x)  # the whole layer's shape and dtype checks, on the whole arrays
        check_divisible(self.name, "batch", x.shape[0], self.mesh, BATCH)
        x_spec = activation(3)

        def local(p, x):
            # the local layer's kernel is "auto" (never "pallas"): its residuals are (qs, kt, vt), no row lse
            partial, (_, _, (qs, kt, vt), om, _) = self._local(x.shape[-1]).forward(self._per_device(p),
                                                                                    self.enter.forward(x, MODEL))
            y = self.leave.forward(partial, MODEL)
            return (add_bias(y, p["bo"]) if self.use_bias else y), (qs, kt, vt, om)

        y, kept = run(self.mesh, local, (self.param_specs(), x_spec),
                      (x_spec, (_HEADS, _HEADS_T, _HEADS_T, activation(3, MODEL))))(params, x)
        return y, (x, *kept)

    def backward(self, params, cache, dy):
        """REDUCE's adjoint (identity) on dy, each device's attention backward for its heads, COPY's psum of dx.

        .. math::
            dW_{o,d} = O_d^T dy,\\; db_o = \\sum dy,\\; dW_{q,d} = x^T dQ_d,\\; \\ldots\\quad
            dx = \\sum_d \\left(dQ_d W_{q,d}^T + dK_d W_{k,d}^T + dV_d W_{v,d}^T\\right)

        (the per-head rules are ``MultiHeadAttention.backward``'s). Parameter gradients summed over
        the batch axis; dx replicated.
        """
        x_spec = activation(3)

        def local(p, x, qs, kt, vt, om, dy):
            dy = self.leave.backward(dy, MODEL)
            grads, dx = self._local(x.shape[-1]).backward(self._per_device(p), (x, None, (qs, kt, vt), om, None), dy)
            return sum_over_batch(grads), self.enter.backward(dx, MODEL)

        check_dy(self, dy, cache[0].shape, cache[0].dtype)
        specs = (self.param_specs(), x_spec, _HEADS, _HEADS_T, _HEADS_T, activation(3, MODEL), x_spec)
        return run(self.mesh, local, specs, (self.param_specs(), x_spec))(params, *cache, dy)


def parallel_block(features: int, num_heads: int, mesh: Mesh, *, hidden: int | None = None, causal: bool = False,
                   epsilon: float = 1e-5, block_size: int | None = None) -> TransformerBlock:
    """GPT-2's pre-norm block, tensor-parallel: ``TransformerBlock`` with ParallelAttention and Megatron's MLP.

    Children ``ln1``, ``attn`` (ParallelAttention), ``ln2``, ``fc1`` (ColumnParallelDense(hidden)),
    ``gelu``, ``fc2`` (RowParallelDense(features)); the same parameters as
    ``TransformerBlock(features, num_heads, hidden=hidden)``. Four collectives per block in each
    direction: the attention's and the MLP's COPY and REDUCE.
    """
    hidden = 4 * features if hidden is None else hidden
    attn = ParallelAttention(num_heads, mesh, causal, block_size=block_size)
    attn._whole()._dh(features)  # features not divisible by num_heads: say so now, not at the first forward
    parts = (("ln1", LayerNorm(epsilon)), ("attn", attn),
             ("ln2", LayerNorm(epsilon)), ("fc1", ColumnParallelDense(hidden, mesh)), ("gelu", GELU()),
             ("fc2", RowParallelDense(features, mesh)))
    return TransformerBlock.from_parts(parts)
