"""Data parallelism with ``jax.sharding``: a Mesh over devices, the batch sharded, the parameters replicated.

Under ``jax.jit`` the loss is a mean over the whole (sharded) batch, so XLA's
SPMD partitioner computes each device's share of the forward and backward
and inserts the all-reduce that sums the gradient contributions; every
device then applies the same update to its replica of the parameters. The
code of the training step does not change.

On the CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set
before jax is imported) gives 4 devices; on a machine with fewer cores than
that, also set ``NPROC=8``: XLA's CPU thread pool has one thread per core,
and devices blocked in a collective can starve the one they wait for (a
deadlock, measured with 4 devices on 2 cores). On several hosts, call
``jax.distributed.initialize()`` in every process first; ``jax.devices()``
then lists every host's devices and the same mesh spans them.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh named "batch" over the first ``devices`` devices (all when None)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"make_mesh: devices must be a positive integer, got {devices!r}")
    if n > len(available):
        raise ValueError(
            f"make_mesh: asked for {n} devices but only {len(available)} are available "
            f"({available[0].platform}); on the CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n} "
            "before jax is imported"
        )
    return Mesh(np.array(available[:n]), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(mesh: Mesh, batch_size: int):
    """Raise a ValueError unless the batch splits evenly across the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"data parallel: batch_size {batch_size} is not divisible by the {n} devices")


def shard_batch(mesh: Mesh, tree):
    """Place every array of ``tree`` with its batch axis split across the mesh."""
    return jax.device_put(tree, batch_sharding(mesh))


def replicate(mesh: Mesh, tree):
    """Place every array of ``tree`` (params, optimizer state) whole on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
