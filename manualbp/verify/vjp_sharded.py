"""fn's VJP with its inputs sharded over a mesh, against the one-device result (``check_vjp(..., mesh=)``).

Two ways a rule meets several devices:

* ``jax.jit`` with sharded inputs (GSPMD): fn is global code; XLA partitions the forward and the backward. The
  result must be the one-device result, up to the rounding of reordered sums.
* ``jax.shard_map`` (``in_specs`` and ``out_specs`` given): fn is per-device code with collectives (psum,
  all_gather, psum_scatter) whose adjoints the rule writes or JAX inserts. Each collective has a fixed adjoint
  (identity <-> psum, all_gather <-> psum_scatter); a forgotten or doubled reduction leaves each device with its
  own partial cotangent, or the device count times the right one. The one-device result is the same shard_map
  over a mesh of one device (the collectives are identities there), which is also what the rest of the check
  compares with the reference.

Rows "output on N devices" and "<x> on N devices": the mesh's VJP against the one-device VJP, the fixed tolerance
of the dtype. This module calls ``jax.vjp`` on the user's functions (``tests/test_purity.py`` names it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from manualbp.verify.vjp_inputs import describe, phase
from manualbp.verify.vjp_rows import row


def one_device(mesh: Mesh) -> Mesh:
    """A mesh of the first device of ``mesh``, with its axis names (every axis of size 1)."""
    return Mesh(np.asarray(mesh.devices).ravel()[:1].reshape((1,) * np.ndim(mesh.devices)), mesh.axis_names)


def per_device(fn, mesh: Mesh, in_specs, out_specs, kwargs: dict):
    """``fn`` (per-device code) as a global function: ``jax.shard_map`` over ``mesh``, keyword arguments static."""
    arrays = [k for k, v in kwargs.items() if any(jnp.issubdtype(getattr(a, "dtype", np.dtype(object)), jnp.floating)
                                                  for a in jax.tree_util.tree_leaves(v))]
    if arrays:
        raise ValueError(f"check_vjp: under shard_map (out_specs given), keyword arguments are static options; "
                         f"{', '.join(arrays)} hold{'s' * (len(arrays) == 1)} floating arrays: pass them positionally "
                         "with an in_spec")

    @functools.wraps(fn)
    def wrapped(*args, **kw):
        return jax.shard_map(functools.partial(fn, **kw), mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs)(
            *args)

    return wrapped


def _default_spec(leaf, mesh: Mesh):
    """Axis 0 split over the mesh's first axis where it divides, else replicated."""
    axis = mesh.axis_names[0]
    if np.ndim(leaf) and np.shape(leaf)[0] % mesh.shape[axis] == 0:
        return P(axis)
    return P()


def _leaf_specs(inputs, mesh: Mesh, in_specs):
    """A PartitionSpec for every differentiable leaf: ``in_specs`` (one per positional argument, applied to each of
    its array leaves), else the default."""
    if in_specs is None:
        return [_default_spec(a, mesh) for a in inputs.diff]
    if len(in_specs) != len(inputs.args):
        raise ValueError(f"check_vjp: in_specs has {len(in_specs)} entries for {len(inputs.args)} positional arguments "
                         f"({', '.join(inputs.names)})")
    per_leaf = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda spec, sub: jax.tree_util.tree_map(lambda _: spec, sub), tuple(in_specs),
                               tuple(inputs.args), is_leaf=lambda v: isinstance(v, P) or v is None),
        is_leaf=lambda v: isinstance(v, P) or v is None)
    return [per_leaf[j] or P() for j in inputs.diff_index]


def rows(ctx, fn, mesh: Mesh, in_specs, out_specs, tol) -> list:
    """The mesh's outputs and cotangents against the one-device ones (``ctx``: the rest of the check's)."""
    n = int(np.size(mesh.devices))
    on = f"on {n} device{'s' * (n > 1)}"
    if out_specs is not None:
        g = ctx.inputs.closed(per_device(fn, mesh, in_specs, out_specs, {}))
        diff = ctx.inputs.diff
        how = f"shard_map over {dict(mesh.shape)}"
    else:
        g = ctx.g_fn
        specs = _leaf_specs(ctx.inputs, mesh, in_specs)
        diff = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(ctx.inputs.diff, specs)]
        how = "jit, inputs " + ", ".join(f"{label}: {describe(a)} {s}" for label, a, s in
                                         zip(ctx.inputs.labels, ctx.inputs.diff, specs))

    def run(diff, cts):
        y, pull = jax.vjp(g, diff)
        return y, [pull(ct)[0] for ct in cts]

    with phase(f"{ctx.name} {on} ({how})"):
        y, got = jax.jit(run)(diff, ctx.cts[:ctx.k])
    out = []
    sizes = {"the device count": n}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(y), jax.tree_util.tree_leaves(ctx.y)):
        a, b = np.asarray(a), np.asarray(b)
        out.append((row(ctx.name, f"output{jax.tree_util.keystr(path)} {on}", a, b, tol, note=how), a, b,
                    sizes))
    for i, label in enumerate(ctx.inputs.labels):
        a = np.stack([np.asarray(v[i]) for v in got])
        judged, a, b = ctx.masked(f"{label} {on}", i, a, ctx.looped[i], tol, note=how)
        out.append((judged, a, b, sizes))
    return out
