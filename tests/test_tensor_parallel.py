"""Tensor-parallel and FSDP layers: manual vs jax.grad of the unsharded reference, on 1, 2, 4 and 8 devices.

The collectives act only where a mesh axis has several devices, and the main pytest process has one CPU
device, so the checks run in one subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 set
before jax starts (as tests/test_parallel.py does), on meshes of 1 (1 x 1), 2 (1 x 2), 4 (2 x 2) and 8
(2 x 4) devices, batch x model, float64 on two of them and float32 on the other two (every device count
and both dtypes; the full cross product, more seeds: scripts/parallel_matrix.py). The collective mutants
(tests/mutants/collectives.py) run there too, on the 2 x 2 mesh.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import one_device_mesh
from jax.sharding import Mesh

import manualbp as mbp
from manualbp.cli import main
from manualbp.training import parallel, zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import jax.numpy as jnp, numpy as np
    import manualbp as mbp
    import mutants
    from mutants.catalog import parallel_catalog
    from manualbp.training import parallel
    from manualbp.training.loop import training_mesh

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)

    def gpt(mesh):  # every tensor-parallel layer: the attention, the MLP's column and row layers, in a block
        return mbp.Sequential(mbp.Embedding(10, 16), mbp.PositionalEmbedding(6, 16),
                              mbp.parallel_block(16, 4, mesh, hidden=32, causal=True), mbp.LayerNorm(), mbp.Dense(10))

    def mlp(mesh):  # FSDP, a gathered column output, a row layer that splits a replicated input
        return mbp.Sequential(mbp.FSDPDense(8, mesh), mbp.Tanh(), mbp.ColumnParallelDense(8, mesh, gather_output=True),
                              mbp.Tanh(), mbp.RowParallelDense(4, mesh, input_is_parallel=False), mbp.FSDPDense(4, mesh))

    out = {"compare": [], "mutants": [], "errors": {}}
    head = mbp.SoftmaxCrossEntropy()
    for (batch, model, dtype) in [(1, 1, "float64"), (1, 2, "float32"), (2, 2, "float64"), (2, 4, "float32")]:
        mesh = parallel.make_mesh(batch * model, model=model)
        for name, net, shape, x, y in [
                ("gpt", gpt(mesh), (6,), rng.integers(0, 10, (4, 6)), rng.integers(0, 10, (4, 6))),
                ("mlp", mlp(mesh), (8,), rng.standard_normal((8, 8)).astype(dtype), rng.integers(0, 4, 8))]:
            params = mutants.draw_params(net, shape, np.dtype(dtype), rng)
            report = mbp.compare(net, head, params, x, y)
            out["compare"].append({"devices": batch * model, "mesh": [batch, model], "dtype": dtype, "model": name,
                                   "ok": report.ok, "rows": [f"{r.layer} {r.quantity}" for r in report.rows],
                                   "failed": [str(r) for r in report.rows if not r.ok]})
    mesh = parallel.make_mesh(4, model=2)
    for m in parallel_catalog(mesh):
        case = mutants.case(m)
        verdict = mutants.judge(m, case, mutants.run_compare(case))
        clean = mutants.run_compare(mutants.case(m, mutated=False))
        out["mutants"].append({"name": m.name, "family": m.family, "caught": verdict.caught, "first": verdict.first,
                               "right_row": verdict.right_row, "clean_ok": clean.ok,
                               "forward_clean": verdict.forward_clean})
    wide = parallel.make_mesh(4, model=4)
    for what, make in [("features", lambda: mbp.ColumnParallelDense(6, wide)),
                       ("heads", lambda: mbp.ParallelAttention(2, wide)),
                       ("fsdp", lambda: mbp.FSDPDense(3, mesh)),
                       ("batch", lambda: mbp.RowParallelDense(4, mesh).forward(
                           {"W": jnp.ones((4, 4)), "b": jnp.ones(4)}, jnp.ones((3, 4)))),
                       ("rows", lambda: mbp.RowParallelDense(4, wide).forward(
                           {"W": jnp.ones((6, 4)), "b": jnp.ones(4)}, jnp.ones((2, 6))))]:
        try:
            make()
        except ValueError as e:
            out["errors"][what] = str(e)
    # the parameters' bytes on each device, laid out as training lays them out, for model axes of 1, 2, 4
    out["memory"] = {}
    for m in (1, 2, 4):
        net = gpt(parallel.make_mesh(4, model=m))
        params = net.init(jax.random.key(0), (6,), jnp.float32)[0]
        placed = parallel.place(params, parallel.param_shardings(parallel.mesh_of(net), net, params))
        out["memory"][m] = sorted(set(parallel.bytes_per_device(placed[2]).values()))
    try:
        training_mesh(gpt(mesh), 2)  # what train(..., devices=2) asks first
    except ValueError as e:
        out["errors"]["devices"] = str(e)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def on_eight_devices():
    # NPROC: XLA's CPU thread pool must outnumber the forced devices, or collectives can deadlock (training/parallel.py)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "NPROC": "16",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_layer_matches_jax_grad_on_1_2_4_8_devices(on_eight_devices):
    runs = on_eight_devices["compare"]
    assert {(r["devices"], r["dtype"]) for r in runs} == {(1, "float64"), (2, "float32"), (4, "float64"),
                                                          (8, "float32")}
    for r in runs:
        assert r["ok"], (r["mesh"], r["dtype"], r["model"], r["failed"])
    gpt_rows = next(r["rows"] for r in runs if r["model"] == "gpt")
    for row in ["2/attn ParallelAttention dWq", "2/attn ParallelAttention dWo", "2/attn ParallelAttention dL/dx",
                "2/fc1 ColumnParallelDense dW", "2/fc1 ColumnParallelDense dL/dx", "2/fc2 RowParallelDense dW",
                "2/fc2 RowParallelDense db", "2/fc2 RowParallelDense forward y", "2 TransformerBlock dL/dx"]:
        assert row in gpt_rows  # a row per layer and quantity, every sharded parameter compared whole
    mlp_rows = next(r["rows"] for r in runs if r["model"] == "mlp")
    assert {"0 FSDPDense dW", "2 ColumnParallelDense dL/dx", "4 RowParallelDense dL/dx", "5 FSDPDense db"} <= set(mlp_rows)


@pytest.mark.slow
def test_each_collective_bug_fails_at_its_own_row(on_eight_devices):
    mutants = on_eight_devices["mutants"]
    assert {m["family"] for m in mutants} == {"tensor_parallel.py", "parallel_attention.py", "fsdp.py"}
    assert len(mutants) == 6
    for m in mutants:
        assert m["caught"] and m["right_row"], m
        assert m["clean_ok"], f"false FAIL of {m['name']}'s clean twin"
        # only the reduce moved into the forward changes a forward row; the others differ in the backward alone
        assert m["forward_clean"] == (m["name"] != "ColumnReduceInForward"), m
    first = {m["name"]: m["first"] for m in mutants}
    assert first["ColumnDxNotReduced"] == ["2 ColumnDxNotReduced", "dL/dx"]
    assert first["ColumnReduceInForward"] == ["2 ColumnReduceInForward", "forward y"]
    assert first["FSDPGradientNotSummed"] == ["2 FSDPGradientNotSummed", "dW"]


@pytest.mark.slow
def test_sizes_that_do_not_split_are_refused(on_eight_devices):
    errors = on_eight_devices["errors"]
    assert errors["features"] == ("ColumnParallelDense: features = 6 is not divisible by the 4 devices of the mesh's "
                                  "'model' axis")
    assert errors["heads"] == "ParallelAttention: num_heads = 2 is not divisible by the 4 devices of the mesh's 'model' axis"
    assert errors["fsdp"] == "FSDPDense: features = 3 is not divisible by the 2 devices of the mesh's 'batch' axis"
    assert errors["batch"] == "RowParallelDense: batch = 3 is not divisible by the 2 devices of the mesh's 'batch' axis"
    assert errors["rows"] == ("RowParallelDense: in (the input's last axis) = 6 is not divisible by the 4 devices of "
                              "the mesh's 'model' axis")


@pytest.mark.slow
def test_parameter_memory_per_device_falls_as_one_over_the_model_axis(on_eight_devices):
    # a block's parameters per device, float32: the split weights (attention: 4 (16 x 16) + bq, bv; MLP: 2 (16 x 32)
    # + fc1's b) fall as 1 / m; the LayerNorms' gamma and beta, bo and fc2's b stay whole on every device
    split = 4 * (4 * 16 * 16 + 2 * 16 + 2 * 16 * 32 + 32)
    whole = 4 * (4 * 16 + 16 + 16)
    memory = on_eight_devices["memory"]
    assert [memory[m] for m in ("1", "2", "4")] == [[split + whole], [split // 2 + whole], [split // 4 + whole]]
    assert on_eight_devices["errors"]["devices"] == (
        "train: devices = 2, but Sequential's tensor-parallel layers run on a mesh of 4 devices {'batch': 2, 'model': 2}; "
        "leave devices out (the model's mesh is used)")


def test_the_mesh_must_have_batch_and_model_axes():
    with pytest.raises(TypeError, match=r"ColumnParallelDense: mesh must be a jax.sharding.Mesh with axes "
                                        r"\('batch', 'model'\), got int"):
        mbp.ColumnParallelDense(4, 2)
    with pytest.raises(ValueError, match=r"ParallelAttention: mesh must have the axes \('batch', 'model'\) \(batch, "
                                         r"then model\), got \('batch',\)"):
        mbp.ParallelAttention(2, parallel.make_mesh(1))


def test_a_wrong_parameter_is_named_before_any_collective():
    layer = mbp.ColumnParallelDense(4, one_device_mesh())
    with pytest.raises(ValueError, match=r"ColumnParallelDense: expected parameter W of shape \(3, 4\) \(in, features\), "
                                         r"got \(4, 4\)"):
        layer.forward({"W": jnp.ones((4, 4), jnp.float32), "b": jnp.ones(4, jnp.float32)}, jnp.ones((2, 3), jnp.float32))


def test_training_lays_out_each_parameter_as_its_layer_says():
    mesh = one_device_mesh()
    model = mbp.Sequential(mbp.Dense(8), mbp.parallel_block(8, 2, mesh, hidden=16), mbp.FSDPDense(4, mesh))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), (3, 5))[0])
    specs = parallel.param_specs(model, params)
    P = jax.sharding.PartitionSpec
    assert specs[0] == {"W": P(), "b": P()}
    assert specs[1]["attn"]["Wq"] == P(None, "model") and specs[1]["attn"]["Wo"] == P("model", None)
    assert specs[1]["attn"]["bo"] == P() and specs[1]["fc1"] == {"W": P(None, "model"), "b": P("model")}
    assert specs[1]["fc2"] == {"W": P("model", None), "b": P()} and specs[1]["ln1"] == {"gamma": P(), "beta": P()}
    assert specs[2] == {"W": P("batch", None), "b": P("batch")}
    assert parallel.mesh_of(model) is mesh and parallel.mesh_of(mbp.Dense(3)) is None
    explicit = (jax.sharding.AxisType.Explicit,) * 2
    other = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"), axis_types=explicit)
    with pytest.raises(ValueError, match="Sequential: its layers run on 2 different meshes; build every "
                                         "tensor-parallel layer with the same one"):
        parallel.mesh_of(mbp.Sequential(mbp.FSDPDense(4, mesh), mbp.FSDPDense(4, other)))


def test_model_parallel_settings_are_checked():
    with pytest.raises(ValueError, match="make_mesh: model must be a positive integer that divides the 1 devices, got 2"):
        parallel.make_mesh(1, model=2)
    with pytest.raises(ValueError, match="model 'mlp' has no tensor-parallel form; model parallelism applies to gpt"):
        zoo.task("mlp", "digits", mesh=one_device_mesh())
    assert main(["train", "--model", "mlp", "--data", "digits", "--model-parallel", "2", "--devices", "2"]) == 2
    assert main(["train", "--model", "gpt", "--data", "sort", "--model-parallel", "2", "--devices", "3"]) == 2
    assert main(["train", "--model", "gpt", "--data", "sort", "--num-processes", "2", "--coordinator", "h:1"]) == 2
    assert main(["train", "--model", "gpt", "--data", "sort", "--num-processes", "2", "--process-id", "0"]) == 2
    assert main(["train", "--model", "gpt", "--data", "sort", "--process-id", "0"]) == 2
