"""Collective mutants: tensor_parallel.py, parallel_attention.py, fsdp.py.

Each tensor-parallel layer names the collective pairs it uses as class attributes (``enter``, ``leave``,
``gather``; the pairs are ``manualbp.layers.collectives``'), so each bug is ONE changed line: the pair swapped
for another, or for one with the adjoint forgotten or doubled. The bugs of the issue tracker and of
Megatron-style ports: the all-reduce of dx forgotten (every device keeps its own partial dx), done twice (n
times too large), done in the forward where the backward needed it (Megatron's f and g swapped), and the two
gathers confused (the own slice where the devices' partial gradients must be summed, and the reverse).

On one device every collective is the identity and every one of these computes the right numbers: they show
only where the mesh's axis has 2 or more devices (tests/test_tensor_parallel.py runs them on a (2, 2) mesh).
"""

from __future__ import annotations

import jax

import manualbp as mbp
from manualbp.layers.collectives import GATHER, GATHER_SUMMED, REDUCE, Collective
from mutants.base import mutant_of


def _identity(x, axis, dim):
    return x


def _psum_twice(x, axis, dim):
    return jax.lax.psum(jax.lax.psum(x, axis), axis)


PSUM_FORGOTTEN = Collective("copy with the psum of dx forgotten", _identity, _identity)
PSUM_TWICE = Collective("copy with dx psummed twice", _identity, _psum_twice)


@mutant_of(mbp.ColumnParallelDense)
class ColumnDxNotReduced(mbp.ColumnParallelDense):
    """dx = dy_d W_d^T: the psum of COPY's backward forgotten, each device keeps its own partial dx."""

    enter = PSUM_FORGOTTEN  # right: COPY


@mutant_of(mbp.ColumnParallelDense)
class ColumnDxReducedTwice(mbp.ColumnParallelDense):
    """dx psummed twice (once in the layer, once more "to be safe"): n times the gradient."""

    enter = PSUM_TWICE  # right: COPY


@mutant_of(mbp.ColumnParallelDense)
class ColumnReduceInForward(mbp.ColumnParallelDense):
    """Megatron's f and g swapped: the all-reduce done on x in the forward (n x), none on dx in the backward."""

    enter = REDUCE  # right: COPY


@mutant_of(mbp.ColumnParallelDense)
class ColumnGatherSummed(mbp.ColumnParallelDense):
    """A gathered output whose gradient is reduce-scattered: dy is the same on every device, so n times too large."""

    leave = GATHER_SUMMED  # right: GATHER


@mutant_of(mbp.ParallelAttention)
class AttentionDxNotReduced(mbp.ParallelAttention):
    """The attention's dx left per device: each keeps the part of dx its own heads give."""

    enter = PSUM_FORGOTTEN  # right: COPY


@mutant_of(mbp.FSDPDense)
class FSDPGradientNotSummed(mbp.FSDPDense):
    """FSDP's parameter gather with GATHER's adjoint: each device keeps its own batch shard's part of dW."""

    gather = GATHER  # right: GATHER_SUMMED

