"""How long a newcomer waits: ``manualbp check`` against the bare-jax baseline, in one run.

The baseline is a fresh interpreter that imports jax and runs one op (the
least any jax program costs). Each ``manualbp check --model M`` runs in a
fresh interpreter too, interleaved with the baseline (A B A B ...), cold (an
empty compilation cache: a first run) and warm (the cache that a previous run
filled). Reported: median wall and CPU seconds (user + sys of the child), and
their ratios to the baseline's medians. On a shared machine the CPU ratio is the
steadier figure; the load average is recorded beside it.

Run: .venv/bin/python scripts/demo_speed.py [--models mlp all] [--repeats 3] [--out demo_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = [sys.executable, "-c", "import jax, jax.numpy as jnp; jnp.ones(3).sum().block_until_ready()"]
MANUALBP = [sys.executable, "-m", "manualbp"]


def timed(argv, env) -> tuple[float, float]:
    """(wall s, child CPU s) of one subprocess; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(models, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # as a user runs it
    runs = {"baseline": []}
    warm_dirs = {}
    for model in models:  # fill each model's warm cache once, outside the timings
        warm_dirs[model] = tempfile.mkdtemp(prefix=f"mbp-warm-{model}-")
        timed(MANUALBP + ["check", "--model", model, "--cache-dir", warm_dirs[model]], env)
    for _ in range(repeats):
        for model in models:
            runs.setdefault(f"{model} cold", [])
            runs.setdefault(f"{model} warm", [])
            runs["baseline"].append(timed(BASELINE, env))
            cold = tempfile.mkdtemp(prefix="mbp-cold-")
            runs[f"{model} cold"].append(timed(MANUALBP + ["check", "--model", model, "--cache-dir", cold], env))
            shutil.rmtree(cold)
            runs["baseline"].append(timed(BASELINE, env))
            runs[f"{model} warm"].append(timed(MANUALBP + ["check", "--model", model, "--cache-dir", warm_dirs[model]], env))
    for d in warm_dirs.values():
        shutil.rmtree(d)
    base_wall = statistics.median(w for w, _ in runs["baseline"])
    base_cpu = statistics.median(c for _, c in runs["baseline"])
    out = {}
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        out[name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "wall_ratio": round(wall / base_wall, 2),
                     "cpu_ratio": round(cpu / base_cpu, 2), "n": len(samples)}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "all"], help="check --model values to time")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each command")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    figures = measure(args.models, args.repeats)
    result = {"load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "figures": figures}
    print(f"load average (1 min) before/after: {result['load_average_1min']}, {os.cpu_count()} CPUs")
    print(f"{'command':<14} {'wall s':>7} {'x bare':>7} {'cpu s':>7} {'x bare':>7}")
    for name, f in figures.items():
        print(f"{name:<14} {f['wall_s']:>7.2f} {f['wall_ratio']:>7.2f} {f['cpu_s']:>7.2f} {f['cpu_ratio']:>7.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
