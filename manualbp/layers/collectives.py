"""Each collective of a tensor-parallel forward, paired ONCE with its adjoint (Megatron-LM's mappings, by hand).

A tensor-parallel layer runs under ``jax.shard_map`` on a mesh with two axes, ``"batch"`` (the
batch split across devices: data parallelism) and ``"model"`` (the layer's weights split across
devices: tensor parallelism). On the model axis every device holds the same activations
(replicated) and its own slice of the weights; a collective joins the slices. Each collective
of the forward has a fixed adjoint in the backward, derived here once; the layers
(``tensor_parallel``, ``parallel_attention``, ``fsdp``) only name the pair they use.

Write the n devices' values of one logical array as x_1 .. x_n, the loss L, and dL/d(value on
device d) as dy_d. A value that is replicated enters L through every device that uses it, so its
gradient is the SUM over those devices of their contributions (the multivariate chain rule); a
value computed identically on every device (replicated work) has one and the same gradient on
each, counted once.

``COPY`` (Megatron's copy-to-model-parallel-region, "f"): forward y_d = x (every device uses the
replicated x with its own weight slice), so

.. math::
    \\partial L/\\partial x = \\sum_d J_d^T dy_d = \\mathrm{psum}(dx_d)

backward: a psum of the per-device dx. Forgotten, each device keeps its own partial dx_d (the
other shards' terms missing); done twice, dx comes out n times too large.

``REDUCE`` (reduce-from-model-parallel-region, "g"): forward y = sum_d z_d (a psum of partial
results, e.g. of x_d W_d). dy/dz_d = I for every d, and y is replicated, so each device's
partial gets the full dy: backward identity. (COPY and REDUCE are each other's transpose.)

``SPLIT`` (scatter-to-model-parallel-region): forward x_d = S_d x, device d keeps its slice of a
replicated x along ``dim``. S_d^T pads dx_d with zeros outside slice d; summing over devices
(COPY's rule) puts each slice in its place: backward all_gather (concatenation) of the dx_d.

``GATHER`` (gather-from-model-parallel-region): forward y = concat_d(x_d), an all_gather,
replicated. The work after it is replicated, so dy is the same on every device and is the whole
gradient of y (counted once): dL/dx_d = dy[slice d], backward keeps the device's own slice.

``GATHER_SUMMED`` (ZeRO-3 / FSDP's parameter gather; Megatron's gather-from-sequence-parallel-
region with tensor_parallel_output_grad): forward all_gather, as GATHER. But here each device
uses the gathered value on DIFFERENT data (its own batch shard), so its cotangent dy_e is a
partial gradient and the true one is their sum:

.. math::
    \\partial L/\\partial x_d = \\left(\\sum_e dy_e\\right)[\\mathrm{slice}\\ d]
    = \\mathrm{psum\\_scatter}(dy)_d

backward a reduce-scatter (``lax.psum_scatter``). Which of GATHER and GATHER_SUMMED is right is
decided by what the devices do after the gather (the same work, or work on their own data);
swapping them gives a gradient n times too large, or only one device's part.

Parameters are replicated along the batch axis (each batch shard uses all of them), so COPY on
the batch axis gives every layer its data-parallel gradient all-reduce (``sum_over_batch``),
written out like the rest.

The layers call ``shard_map`` with ``check_vma=False``: the replication that an ``out_specs``
claims is then exactly what the collectives make of it, so a missing psum shows as a wrong
number in a comparison row (the first row that disagrees names the layer) rather than as
jax's trace-time error, and all_gather results may be returned as replicated.

References: Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
Model Parallelism" (2019), section 3 (the f and g operators); Rajbhandari et al., "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models" (2020); jax's ``shard_map`` tutorial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
from jax.sharding import Mesh, PartitionSpec

BATCH, MODEL = "batch", "model"  # the two mesh axes every tensor-parallel layer's mesh has, in this order


def _identity(x, axis, dim):
    del axis, dim
    return x


def _psum(x, axis, dim):
    del dim
    return jax.lax.psum(x, axis)


def _own_slice(x, axis, dim):
    """Device d's slice d of ``x`` along ``dim`` (x replicated, its ``dim`` divisible by the axis size)."""
    n = jax.lax.axis_size(axis)
    size = x.shape[dim] // n
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(axis) * size, size, axis=dim % x.ndim)


def _all_gather(x, axis, dim):
    return jax.lax.all_gather(x, axis, axis=dim % x.ndim, tiled=True)


def _psum_scatter(x, axis, dim):
    return jax.lax.psum_scatter(x, axis, scatter_dimension=dim % x.ndim, tiled=True)


@dataclass(frozen=True)
class Collective:
    """A collective of the forward and its adjoint: ``forward(x, axis, dim)``, ``backward(dy, axis, dim)``.

    Both act on pytrees (every leaf) inside ``shard_map``; ``dim`` is the array axis a gather or a
    split acts on (ignored by the others). The pairs and their derivations: the module docstring.
    """

    name: str
    forward_fn: Callable
    backward_fn: Callable

    def forward(self, x, axis: str, dim: int = -1):
        return jax.tree_util.tree_map(lambda v: self.forward_fn(v, axis, dim), x)

    def backward(self, dy, axis: str, dim: int = -1):
        return jax.tree_util.tree_map(lambda v: self.backward_fn(v, axis, dim), dy)


COPY = Collective("copy (identity | psum)", _identity, _psum)
REDUCE = Collective("reduce (psum | identity)", _psum, _identity)
SPLIT = Collective("split (own slice | all_gather)", _own_slice, _all_gather)
GATHER = Collective("gather (all_gather | own slice)", _all_gather, _own_slice)
GATHER_SUMMED = Collective("gather summed (all_gather | psum_scatter)", _all_gather, _psum_scatter)


def sum_over_batch(grads):
    """COPY's adjoint on the batch axis: every batch shard used the same parameters, their gradients add."""
    return COPY.backward(grads, BATCH)


def check_mesh(name: str, mesh) -> Mesh:
    """Raise unless ``mesh`` is a ``jax.sharding.Mesh`` with exactly the axes ("batch", "model")."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{name}: mesh must be a jax.sharding.Mesh with axes {(BATCH, MODEL)}, got "
                        f"{type(mesh).__name__}; make one with manualbp.training.parallel.make_mesh(devices, model=m)")
    if tuple(mesh.axis_names) != (BATCH, MODEL):
        raise ValueError(f"{name}: mesh must have the axes {(BATCH, MODEL)} (batch, then model), got "
                         f"{tuple(mesh.axis_names)}; make one with manualbp.training.parallel.make_mesh(devices, model=m)")
    return mesh


def model_size(mesh: Mesh) -> int:
    """n: the devices a tensor-parallel weight is split across."""
    return mesh.shape[MODEL]


def check_divisible(name: str, what: str, size: int, mesh: Mesh, axis: str = MODEL):
    """Raise a ValueError unless ``size`` splits evenly across the mesh's ``axis``."""
    n = mesh.shape[axis]
    if size % n:
        raise ValueError(f"{name}: {what} = {size} is not divisible by the {n} devices of the mesh's {axis!r} axis")


def activation(ndim: int, last: str | None = None) -> PartitionSpec:
    """An activation (B, ..., K): batch split over "batch", the last axis over ``last`` (None: whole)."""
    return PartitionSpec(BATCH, *([None] * (ndim - 2)), last)


def run(mesh: Mesh, fn, in_specs, out_specs):
    """``fn`` under ``jax.shard_map`` on ``mesh``, every axis manual, replication unchecked (module docstring)."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
