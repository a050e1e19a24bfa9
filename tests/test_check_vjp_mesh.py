"""check_vjp(..., mesh=): a rule's VJP with its inputs sharded over 1, 2 and 4 devices equals the one-device VJP.

The main pytest process has one CPU device, so every multi-device case runs in ONE subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4 set before jax starts (as tests/test_parallel.py does), on meshes
of the first 1, 2 and 4 of those devices.

Two ways a rule meets several devices: global code under jax.jit with sharded inputs (a layer norm's custom_vjp),
and per-device code under shard_map with a collective whose adjoint the rule writes (Megatron's "copy to the
tensor-parallel region": identity forward, sum of the cotangent over the devices backward). jax's shard_map already
sums the cotangent of a replicated input over the devices, so a rule that psums it again doubles it: the device
count times the right cotangent, invisible on one device.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import manualbp as mbp

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x, gamma, w = rng.standard_normal((8, 6)), 1 + 0.1 * rng.standard_normal(6), rng.standard_normal((6, 4))

    def layer_norm(x, gamma):
        xc = x - x.mean(-1, keepdims=True)
        return xc / jnp.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5) * gamma[None]

    @jax.custom_vjp
    def fused_layer_norm(x, gamma):
        return layer_norm(x, gamma)

    def fwd(x, gamma):
        xc = x - x.mean(-1, keepdims=True)
        r = 1 / jnp.sqrt((xc**2).mean(-1, keepdims=True) + 1e-5)
        return xc * r * gamma[None], (xc * r, r, gamma)

    def bwd(res, dy):
        xh, r, gamma = res
        g = dy * gamma[None]
        return r * (g - g.mean(-1, keepdims=True) - xh * (g * xh).mean(-1, keepdims=True)), (dy * xh).sum(0)

    fused_layer_norm.defvjp(fwd, bwd)

    def column_parallel(reduces_again):
        @jax.custom_vjp
        def copy_to_region(x):
            return x

        copy_to_region.defvjp(lambda x: (x, None),
                              lambda _, g: (jax.lax.psum(g, "tp") if reduces_again else g,))

        def column_parallel(x, w):  # x replicated, w split by columns: each device computes its columns of y
            return jnp.tanh(copy_to_region(x) @ w)

        return column_parallel

    def summary(report):
        fail = report.first_failure
        return {"status": report.status, "rows": [r.quantity for r in report.rows],
                "first": None if fail is None else fail.quantity,
                "diagnosis": None if fail is None else str(fail.diagnosis)}

    out = {}
    for n in (1, 2, 4):
        if n > 1:
            data = Mesh(np.array(jax.devices()[:n]), ("data",))
            out[f"jit {n}"] = summary(mbp.check_vjp(fused_layer_norm, layer_norm, x, gamma, mesh=data, k=1, jit=True))
        tp = Mesh(np.array(jax.devices()[:n]), ("tp",))
        for again in (False, True) if n > 1 else (False,):  # on one device a psum is the identity: nothing to see
            report = mbp.check_vjp(column_parallel(again), lambda x, w: jnp.tanh(x @ w), x, w, mesh=tp,
                                   in_specs=(P(), P(None, "tp")), out_specs=P(None, "tp"), k=1, jit=True)
            out[f"shard_map {n} {again}"] = summary(report)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sharded_rules_equal_one_device_and_a_doubled_reduction_is_named(results):
    for n in (1, 2, 4):
        on = f"on {n} device{'s' * (n > 1)}"
        right = results[f"shard_map {n} False"]
        assert right["status"] == "PASS" and f"x {on}" in right["rows"], right
    for n in (2, 4):
        jit = results[f"jit {n}"]
        assert jit["status"] == "PASS", jit
        assert {f"x on {n} devices", f"gamma on {n} devices", f"output on {n} devices"} <= set(jit["rows"])
    for n in (2, 4):
        doubled = results[f"shard_map {n} True"]
        assert doubled["status"] == "FAIL" and doubled["first"] == f"x on {n} devices", doubled
        assert doubled["diagnosis"].startswith(f"fn = {n} x reference"), doubled
