"""Data and tensor parallelism with ``jax.sharding``, on one process or several.

Data parallelism (``make_mesh(n)``: a 1-D mesh "batch"): the batch is sharded, the parameters
replicated. Under ``jax.jit`` the loss is a mean over the whole (sharded) batch, so XLA's SPMD
partitioner computes each device's share of the forward and backward and inserts the
all-reduce that sums the gradient contributions; every device then applies the same update to
its replica of the parameters. The code of the training step does not change.

Tensor parallelism (``make_mesh(n, model=m)``: a 2-D mesh ("batch", "model") of n / m x m
devices): a model built from the tensor-parallel layers (``manualbp.layers.tensor_parallel``,
``parallel_attention``, ``fsdp``) carries this mesh and runs its own collectives; training
finds the mesh in the model (``mesh_of``), shards the batch over "batch" and lays every
parameter out as its layer says (``param_shardings``; the optimizer state's copies of the
parameters alike), so each device holds 1/m of the split weights.

On the CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before jax is imported)
gives 4 devices; on a machine with fewer cores than that, also set ``NPROC=8``: XLA's CPU thread
pool has one thread per core, and devices blocked in a collective can starve the one they wait
for (a deadlock, measured with 4 devices on 2 cores).

Several processes (``initialize``): each process calls ``jax.distributed.initialize`` first;
``jax.devices()`` then lists every process's devices and the same mesh spans them. Every process
runs the same program on the same data (the same batches, drawn from the same key) and feeds
its own devices; ``to_host`` gathers a sharded result whole on every process (checkpoints are
written by process 0 alone).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from manualbp.layers.base import children_of
from manualbp.layers.collectives import BATCH, MODEL

BATCH_AXIS = BATCH

# a process that stops sending heartbeats is declared dead after this long, and the others then stop with an error
# (jax's default, 100 s, would leave them waiting that long); the first collective with a dead peer fails at once
HEARTBEAT_TIMEOUT_S = 10
INITIALIZATION_TIMEOUT_S = 60  # how long a process waits at start for all the others to join


def initialize(coordinator: str, num_processes: int, process_id: int):
    """Join a run of ``num_processes`` processes (``jax.distributed.initialize``), before any other jax call.

    ``coordinator`` is "host:port" of process 0 (e.g. "127.0.0.1:12345" on one machine). On the CPU
    the processes' collectives go over gloo (TCP). Raise a ValueError for settings that cannot be one.
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"distributed: num_processes must be a positive integer, got {num_processes!r}")
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed: process_id must be in [0, {num_processes}), got {process_id!r}")
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(f"distributed: coordinator must be host:port (e.g. 127.0.0.1:12345), got {coordinator!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=INITIALIZATION_TIMEOUT_S,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)


def make_mesh(devices: int | None = None, *, model: int | None = None) -> Mesh:
    """A mesh over the first ``devices`` devices (all when None).

    Without ``model``: 1-D, named "batch" (data parallelism). With ``model`` = m: 2-D,
    ("batch", "model") of shape (devices / m, m), for the tensor-parallel layers; m consecutive
    devices share a model axis.
    """
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
    if model is None:
        return Mesh(np.array(available[:n]), (BATCH_AXIS,))
    if not isinstance(model, (int, np.integer)) or model <= 0 or n % model:
        raise ValueError(f"make_mesh: model must be a positive integer that divides the {n} devices, got {model!r}")
    return Mesh(np.array(available[:n]).reshape(n // model, model), (BATCH, MODEL))


def mesh_of(model) -> Mesh | None:
    """The mesh the tensor-parallel layers of ``model`` run on; None for a model without any.

    Raise a ValueError if two layers hold different meshes (their collectives could not meet).
    """
    meshes = []

    def visit(layer):
        mesh = getattr(layer, "mesh", None)
        if isinstance(mesh, Mesh) and mesh not in meshes:
            meshes.append(mesh)
        for _, child in children_of(layer):
            visit(child)

    visit(model)
    if len(meshes) > 1:
        raise ValueError(f"{getattr(model, 'name', type(model).__name__)}: its layers run on {len(meshes)} different "
                         "meshes; build every tensor-parallel layer with the same one")
    return meshes[0] if meshes else None


def param_specs(model, params):
    """A PartitionSpec for every leaf of ``params``: the layer's ``param_specs()``, P() (replicated) elsewhere."""
    found = {}

    def visit(layer, p):
        if children_of(layer):
            for (_, child), q in zip(children_of(layer), layer.split_params(p)):
                visit(child, q)
        elif hasattr(layer, "param_specs") and isinstance(p, dict):
            specs = layer.param_specs()
            found.update({id(v): specs[k] for k, v in p.items() if k in specs})

    visit(model, params)
    return jax.tree_util.tree_map(lambda v: found.get(id(v), PartitionSpec()), params)


def param_shardings(mesh: Mesh, model, params):
    """``params``' NamedShardings on ``mesh``: each split parameter as its layer says, the others replicated."""
    return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), param_specs(model, params),
                                  is_leaf=lambda v: isinstance(v, PartitionSpec))


def state_shardings(mesh: Mesh, tree, params, shardings):
    """Shardings for ``tree`` (an optimizer state, a training state): every subtree shaped like ``params`` (Adam's
    moments, momentum) laid out as ``shardings``, every other leaf (step counts) replicated."""
    structure = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_map(
        lambda sub: shardings if jax.tree_util.tree_structure(sub) == structure else NamedSharding(mesh, PartitionSpec()),
        tree, is_leaf=lambda sub: jax.tree_util.tree_structure(sub) == structure)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis across the mesh's "batch" axis; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(mesh: Mesh, batch_size: int):
    """Raise a ValueError unless the batch splits evenly across the mesh's "batch" axis."""
    n = mesh.shape[BATCH_AXIS]
    if batch_size % n:
        where = f"{n} devices" if len(mesh.axis_names) == 1 else f"{n} devices of the mesh's batch axis"
        raise ValueError(f"data parallel: batch_size {batch_size} is not divisible by the {where}")


def place(tree, shardings):
    """``jax.device_put(tree, shardings)``; on several processes from host copies (every process holds the same)."""
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    return jax.device_put(tree, shardings)


def shard_batch(mesh: Mesh, tree):
    """Place every array of ``tree`` with its batch axis split across the mesh."""
    return place(tree, batch_sharding(mesh))


def replicate(mesh: Mesh, tree):
    """Place every array of ``tree`` (params, optimizer state) whole on every device of the mesh."""
    return place(tree, replicated(mesh))


def beside(params, tree):
    """``tree`` replicated on the mesh that ``params`` are sharded over (to run a model on it); unchanged when
    ``params`` sit on one device."""
    sharding = getattr(jax.tree_util.tree_leaves(params)[0], "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return replicate(sharding.mesh, tree)
    return tree


def to_host(tree):
    """Every array of ``tree`` as a whole numpy array on this process, gathered from every process's devices."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree_util.tree_map(
        lambda v: np.asarray(multihost_utils.process_allgather(v, tiled=True)) if isinstance(v, jax.Array)
        and not v.is_fully_addressable else np.asarray(v), tree)


def bytes_per_device(tree) -> dict:
    """{device id: bytes of ``tree``'s shards it holds}: the memory a sharded state takes on each device."""
    out: dict = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out
