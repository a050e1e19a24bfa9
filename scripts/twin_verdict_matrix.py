"""The twin verdict's false-failure matrix and its power: every built-in task x {1, 2, 4} devices x float32.

For each task (``manualbp.training.zoo``) and device count it trains the
manual and the reference model in lockstep (``mbp.train_twin``, the task's
optimizer and learning rate, batch 64) for ``--steps`` steps and records the
verdict, how close the worst step came to failing, how many steps needed
the fallback (the reference's own spread over other batch orders and rounding neighbours of the parameters), how far
the two trajectories drifted apart, and the time per step against plain
manual training (steps 100 to 400 of one run, compiling excluded; twin and manual
interleaved 3 times, medians). Then, on one device, the same run with a deliberately
wrong backward (the last Dense layer's bias gradient 1% too large) must be
DIVERGED early: the step at which it is, is recorded.

Each task runs in its own process with 4 forced CPU devices (and the thread
pool that XLA needs for them, see ``manualbp/cli/train.py``). Results go to
``--out`` as JSON and a markdown table on stdout.

    .venv/bin/python scripts/twin_verdict_matrix.py [--steps 1000] [--tasks mlp/digits,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ONE_TASK = r"""
import json, sys, time
from dataclasses import dataclass
import jax, jax.numpy as jnp, numpy as np
from manualbp.layers.dense import Dense
from manualbp.training import zoo
from manualbp.training.train import train, train_twin

jax.config.update("jax_enable_x64", True)  # as `manualbp train --grad twin`: the twin measures the reference's own error
model_name, data_name, steps, devices = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
task = zoo.task(model_name, data_name)
data = task.load(jnp.float32)


@dataclass(frozen=True)
class WrongBias(Dense):
    # the mutant: db 1% too large, everything else right
    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {**grads, "b": grads["b"] * 1.01}, dx


def run(model, n, steps, twin=True):
    params = jax.jit(lambda k: model.init(k, data.input_shape, jnp.float32)[0])(jax.random.key(0))
    kw = dict(optimizer=zoo.optimizer(task.optimizer, task.lr), steps=steps, batch_size=64, key=jax.random.key(1),
              devices=None if n == 1 else n)
    t0 = time.perf_counter()
    result = (train_twin if twin else train)(model, task.head, params, data, **kw)
    return result, time.perf_counter() - t0


out = []
for n in devices:
    r, wall = run(task.model, n, steps)
    dv = r.divergence
    tol = dv.tolerance.norm
    exceed = dv.grad > tol
    ratio = np.where(exceed, dv.grad / np.maximum(dv.grad_noise, 1e-30), 0)
    out.append({"task": f"{model_name}/{data_name}", "devices": n, "ok": dv.ok, "first_failure": dv.first_failure,
                "worst": dv.worst(), "max_grad_over_tol": float(dv.grad.max() / tol),
                "fallback_steps": int(exceed.any(axis=1).sum()), "max_ratio_on_fallback": float(ratio.max()),
                "max_update": float(dv.update.max()), "final_drift": float(dv.drift[-1].max()),
                "accuracy_or_mse": [r.manual.test, r.reference.test], "wall_s": wall})
    print(json.dumps(out[-1]), flush=True)
# cost: time per step of twin against manual training, after compilation: within one run, the clock between the
# host syncs at steps 100 and 400 (compiling happens at step 1); twin and manual interleaved 3 times, medians
def per_step_ms(twin):
    marks = {}
    params = jax.jit(lambda k: task.model.init(k, data.input_shape, jnp.float32)[0])(jax.random.key(0))
    (train_twin if twin else train)(task.model, task.head, params, data, steps=400, batch_size=64,
                                    optimizer=zoo.optimizer(task.optimizer, task.lr), key=jax.random.key(1),
                                    log_every=100, on_log=lambda step, _: marks.setdefault(step, time.perf_counter()))
    return (marks[400] - marks[100]) / 300 * 1e3


samples = {"twin_ms": [], "manual_ms": []}
for _ in range(3):
    samples["twin_ms"].append(per_step_ms(True))
    samples["manual_ms"].append(per_step_ms(False))
cost = {k: float(np.median(v)) for k, v in samples.items()}
layers = task.model.layers
wrong = type(task.model)(*layers[:-1], WrongBias(layers[-1].features, layers[-1].use_bias))
r, _ = run(wrong, 1, 100)
print(json.dumps({"task": f"{model_name}/{data_name}", "cost": cost, "mutant": {"ok": r.divergence.ok,
                  "first_failure": r.divergence.first_failure}}), flush=True)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--tasks", default="all", help="comma-separated model/data pairs (default: every task)")
    parser.add_argument("--out", default="docs/img/twin_verdict_matrix.json")
    args = parser.parse_args(argv)
    from manualbp.training.zoo import TASKS

    tasks = [tuple(t.split("/")) for t in args.tasks.split(",")] if args.tasks != "all" else list(TASKS)
    devices = [int(v) for v in args.devices.split(",")]
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={max(devices)}",
           "NPROC": str(max(os.cpu_count() or 1, 2 * max(devices))), "JAX_PLATFORMS": "cpu"}
    rows, extra = [], []
    t0 = time.perf_counter()
    for model, data in tasks:
        proc = subprocess.run([sys.executable, "-c", ONE_TASK, model, data, str(args.steps), json.dumps(devices)],
                              env=env, capture_output=True, text=True)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
        rows += [r for r in lines if "devices" in r]
        extra += [r for r in lines if "cost" in r]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"steps": args.steps, "rows": rows, "per_task": extra, "wall_s": time.perf_counter() - t0}, f, indent=1)
    print(f"| task | devices | verdict | worst gradient difference / tolerance | steps on fallback | worst ratio to "
          f"the reference's own rounding there | final drift of the trajectories | ({args.steps} steps, float32)")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "PASS" if r["ok"] else f"DIVERGED at step {r['first_failure']['step']}"
        print(f"| {r['task']} | {r['devices']} | {verdict} | {r['max_grad_over_tol']:.2f} | {r['fallback_steps']} | "
              f"{r['max_ratio_on_fallback']:.2f} | {r['final_drift']:.1e} |")
    print("\n| task | twin ms/step | manual ms/step | 1% wrong bias gradient |\n|---|---|---|---|")
    for r in extra:
        m = r["mutant"]
        caught = f"DIVERGED at step {m['first_failure']['step']} ({m['first_failure']['kind']} " \
                 f"{m['first_failure']['parameter']})" if not m["ok"] else "missed"
        print(f"| {r['task']} | {r['cost']['twin_ms']:.1f} | {r['cost']['manual_ms']:.1f} | {caught} |")
    return 0 if all(r["ok"] for r in rows) and not any(r["mutant"]["ok"] for r in extra) else 1


if __name__ == "__main__":
    sys.exit(main())
