"""The tensor-parallel layers' verdict matrix: meshes of 1, 2, 4, 8 devices x float32, float64 x seeds, and mutants.

Clean models (0 FAILs expected): a tensor-parallel GPT block (``parallel_block``: ParallelAttention, Column- and
RowParallelDense) between an embedding and a head, and an MLP of FSDPDense, a gathered ColumnParallelDense and a
RowParallelDense that splits its replicated input; random parameters (``tests/mutants``' ``draw_params``) and
data per seed, ``mbp.compare`` against jax.grad of the unsharded reference. Mutants
(``tests/mutants/collectives.py``): each must FAIL with its first failing row on its own layer, on every mesh
where its collective acts (the model axis, or for FSDP the batch axis, of 2 devices or more); where the axis
has one device the mutant computes the right numbers and must PASS.

Runs with 8 simulated CPU devices (set here, before jax starts). Results go to ``--out`` as JSON and a markdown
summary on stdout.

    .venv/bin/python scripts/parallel_matrix.py [--seeds 3] [--out docs/img/parallel_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("NPROC", "16")  # XLA's CPU thread pool must outnumber the devices (manualbp/training/parallel.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

import mutants  # noqa: E402
import numpy as np  # noqa: E402
from mutants.catalog import parallel_catalog  # noqa: E402

import manualbp as mbp  # noqa: E402
from manualbp.cli.benchmarks.timing import machine  # noqa: E402
from manualbp.training import parallel  # noqa: E402

MESHES = [(1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 2), (2, 4), (1, 8)]  # (batch, model)


def gpt(mesh):
    return mbp.Sequential(mbp.Embedding(10, 16), mbp.PositionalEmbedding(6, 16),
                          mbp.parallel_block(16, 8, mesh, hidden=32, causal=True), mbp.LayerNorm(), mbp.Dense(10))


def mlp(mesh):
    return mbp.Sequential(mbp.FSDPDense(8, mesh), mbp.Tanh(), mbp.ColumnParallelDense(8, mesh, gather_output=True),
                          mbp.Tanh(), mbp.RowParallelDense(4, mesh, input_is_parallel=False), mbp.FSDPDense(4, mesh))


def clean_runs(seeds: int) -> list:
    out = []
    head = mbp.SoftmaxCrossEntropy()
    for batch, model in MESHES:
        mesh = parallel.make_mesh(batch * model, model=model)
        for dtype in ("float32", "float64"):
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                for name, net, shape, x, y in [
                        ("gpt", gpt(mesh), (6,), rng.integers(0, 10, (4, 6)), rng.integers(0, 10, (4, 6))),
                        ("mlp", mlp(mesh), (8,), rng.standard_normal((8, 8)).astype(dtype), rng.integers(0, 4, 8))]:
                    params = mutants.draw_params(net, shape, np.dtype(dtype), rng)
                    report = mbp.compare(net, head, params, x, y)
                    worst = max((r.norm_rel for r in report.rows if r.compared), default=0.0)
                    out.append({"mesh": [batch, model], "devices": batch * model, "dtype": dtype, "seed": seed,
                                "model": name, "ok": report.ok, "rows": len(report.rows), "worst_norm_rel": worst,
                                "summary": report.summary()})
                    print(f"{batch}x{model} {dtype} seed {seed} {name}: {report.summary()}", flush=True)
    return out


def mutant_runs() -> list:
    out = []
    for batch, model in MESHES:
        if batch * model == 1:
            continue
        mesh = parallel.make_mesh(batch * model, model=model)
        for m in parallel_catalog(mesh, heads=max(4, model)):  # the attention's heads split over the model axis
            acts = (batch if m.family == "fsdp.py" else model) > 1
            for dtype in ("float64", "float32"):
                try:
                    case = mutants.case(m, dtype=np.dtype(dtype))
                except ValueError as e:
                    out.append({"mesh": [batch, model], "mutant": m.name, "dtype": dtype, "skipped": str(e)})
                    continue
                verdict = mutants.judge(m, case, mutants.run_compare(case))
                out.append({"mesh": [batch, model], "mutant": m.name, "dtype": dtype, "axis_acts": acts,
                            "caught": verdict.caught, "first": verdict.first, "right_row": verdict.right_row})
                print(f"{batch}x{model} {dtype} {m.name}: caught {verdict.caught}, first {verdict.first}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="docs/img/parallel_matrix.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    clean, bugs = clean_runs(args.seeds), mutant_runs()
    out = {"machine": machine(), "wall_s": time.perf_counter() - t0, "clean": clean, "mutants": bugs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    fails = [r for r in clean if not r["ok"]]
    print(f"\nclean: {len(clean) - len(fails)} of {len(clean)} PASS; worst norm rel "
          f"float32 {max(r['worst_norm_rel'] for r in clean if r['dtype'] == 'float32'):.1e}, "
          f"float64 {max(r['worst_norm_rel'] for r in clean if r['dtype'] == 'float64'):.1e}")
    judged = [r for r in bugs if "skipped" not in r]
    acting = [r for r in judged if r["axis_acts"]]
    idle = [r for r in judged if not r["axis_acts"]]
    print(f"mutants where their axis has >= 2 devices: {sum(r['caught'] and r['right_row'] for r in acting)} of "
          f"{len(acting)} FAIL at their own row; where it has 1: {sum(not r['caught'] for r in idle)} of {len(idle)} "
          f"PASS (the same numbers as the real layer); skipped (sizes that do not split): {len(bugs) - len(judged)}")
    print(f"written to {args.out} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
