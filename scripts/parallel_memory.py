"""Memory per device of tensor-parallel training: a GPT on 8 devices, model axis m = 1, 2, 4, 8 (batch axis 8 / m).

For each m it builds the tensor-parallel GPT (``parallel_block``) on ``make_mesh(8, model=m)``, lays out the
parameters and Adam's state as training does (``parallel.param_shardings``, ``state_shardings``) and
reports, per device:

- the bytes of the parameters and of the optimizer state it holds (``parallel.bytes_per_device``: the
  shards, counted);
- XLA's compiled memory analysis of the jitted training step (the manual path, Adam): arguments,
  outputs, temporaries and their peak (``manualbp.cli.benchmarks.memory``), which is per device for
  a program partitioned over a mesh;
- the median time of a step (CPU, simulated devices on this machine's cores: shown, not a claim).

m = 1 is plain data parallelism over 8 devices (every parameter replicated). Results go to ``--out`` as JSON
and a markdown table on stdout.

    .venv/bin/python scripts/parallel_memory.py [--out docs/img/parallel_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("NPROC", "16")  # XLA's CPU thread pool must outnumber the devices (manualbp/training/parallel.py)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import manualbp as mbp  # noqa: E402
from manualbp.cli.benchmarks.memory import MIB, compiled_memory  # noqa: E402
from manualbp.cli.benchmarks.timing import machine  # noqa: E402
from manualbp.training import parallel  # noqa: E402
from manualbp.training.step import PathState, make_step  # noqa: E402

VOCAB, T, D, HEADS, BLOCKS, BATCH = 64, 64, 256, 8, 4, 32


def gpt(mesh):
    blocks = [mbp.parallel_block(D, HEADS, mesh, causal=True) for _ in range(BLOCKS)]
    return mbp.Sequential(mbp.Embedding(VOCAB, D), mbp.PositionalEmbedding(T, D), *blocks, mbp.LayerNorm(),
                          mbp.Dense(VOCAB))


def measure(m: int, repeats: int) -> dict:
    mesh = parallel.make_mesh(8, model=m)
    model, head, opt = gpt(mesh), mbp.SoftmaxCrossEntropy(), optax.adam(1e-3)
    params = jax.jit(lambda k: model.init(k, (T,), jnp.float32)[0])(jax.random.key(0))
    state = {"manual": PathState(params, opt.init(params), {})}
    shardings = parallel.state_shardings(mesh, state, params, parallel.param_shardings(mesh, model, params))
    state = parallel.place(state, shardings)
    rng = np.random.default_rng(0)
    x, y = parallel.shard_batch(mesh, (rng.integers(0, VOCAB, (BATCH, T)), rng.integers(0, VOCAB, (BATCH, T))))
    step = make_step(model, head, {"manual": opt}, "classification")
    memory = compiled_memory(step, state, x, y)
    state, logs = step(state, x, y)  # compile and warm up
    jax.block_until_ready(logs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, logs = step(state, x, y)
        jax.block_until_ready(logs)
        times.append(time.perf_counter() - t0)
    params_bytes = parallel.bytes_per_device(state["manual"].params)
    opt_bytes = parallel.bytes_per_device(state["manual"].opt_state)
    return {"model_axis": m, "batch_axis": 8 // m, "params_bytes": sorted(set(params_bytes.values())),
            "opt_state_bytes": sorted(set(opt_bytes.values())), "compiled": memory,
            "step_ms_median": 1e3 * float(np.median(times))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/img/parallel_memory.json")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    rows = [measure(m, args.repeats) for m in (1, 2, 4, 8)]
    whole = rows[0]["params_bytes"][0]
    out = {"model": f"GPT: {BLOCKS} causal blocks (parallel_block), D={D}, {HEADS} heads, MLP {4 * D}, vocab {VOCAB}, "
                    f"T={T}, batch {BATCH}, float32, Adam; 8 simulated CPU devices",
           "machine": machine(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(out["model"])
    print("| mesh (batch x model) | params / device (MiB) | vs m = 1 | Adam state / device (MiB) | step arguments (MiB) | "
          "step peak (MiB) | step (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        (pb,), (ob,) = r["params_bytes"], r["opt_state_bytes"]
        c = r["compiled"]
        print(f"| {r['batch_axis']} x {r['model_axis']} | {pb / MIB:.2f} | {pb / whole:.3f} | {ob / MIB:.2f} | "
              f"{c['arguments'] / MIB:.2f} | {c['peak'] / MIB:.2f} | {r['step_ms_median']:.0f} |")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
