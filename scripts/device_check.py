"""The device check: everything a session with an accelerator should measure, in one command, within 8 minutes.

    make gpu-check                                        # OUT=dir, default gpu-check/
    PYTHONPATH=. python scripts/device_check.py --out DIR  # the machine's own python and jax, no venv needed

It installs nothing and uses the jax it finds. Steps, in order of what the open targets need (issue 29):

1. ``manualbp check --model all`` in float32, bfloat16 and float16: three subprocesses at once (they compile,
   the accelerator idles), each killed at its time limit;
2. the benchmarks of ``manualbp bench`` (``manualbp/cli/benchmarks``, both contenders interleaved): the GPT
   and one attention layer at T = 512 ... 4096 (kernels auto, loop and pallas), in float32 and bfloat16;
   the largest T at which each step still runs (jax.grad's keeps (B, heads, T, T) per layer); then the MLP,
   the CNN, RNN/LSTM/GRU and the conv layers at their ``manualbp bench`` sizes.

Every step has a time limit: a check is killed at its limit, a benchmark is interrupted at the next
Python bytecode after its limit (a compile in progress finishes first), and a step that cannot fit in the
time left is skipped; each such step is recorded with its reason. After every step DIR/device_check.json
(all results) and DIR/device_check.md (the tables, ready for BENCHMARKS.md: docs/gpu.md) are rewritten,
so a run cut short still leaves what it measured.

Without an accelerator (or with --small) it runs the same steps at tiny sizes: the test suite runs it so
(tests/test_device_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the checks' processes share the device with this one

TOTAL_S = 470  # the whole check, under the device's 8 minutes (its start and the copy of DIR back are not in it)
CHECK_DTYPES = ("float32", "bfloat16", "float16")

# per mode: the benchmarks' sizes, repeats and each step's time limit in seconds
FULL = {
    "repeats": 10,
    "check_models": "all", "check_s": 150,
    "attention": {"lengths": (512, 1024, 2048, 4096), "kernels": ("auto", "loop", "pallas")}, "attention_s": 75,
    "gpt": {}, "gpt_s": 50,
    "max_t": (4096, 8192, 16384, 32768), "max_t_s": 60,
    "mlp": {}, "cnn": {}, "recurrent": {}, "conv_layers": {}, "small_s": 30,
}
SMALL = {
    "repeats": 2,
    "check_models": "mlp", "check_s": 120,
    "attention": {"lengths": (16,), "kernels": ("auto", "pallas"), "batch": 2}, "attention_s": 60,
    "gpt": {"T": 16, "batch": 2, "blocks": 1, "depths": ()}, "gpt_s": 60,
    "max_t": (16,), "max_t_s": 60,
    "mlp": {"batch": 8, "sizes": (16, 8, 8, 4), "peak_n": 64}, "cnn": {"batch": 2},
    "recurrent": {"T": 3, "batch": 2, "hidden": 8}, "conv_layers": {"batch": 2}, "small_s": 60,
}


def use_fast_compile():
    """``manualbp/cli/xla_flags.py``'s flags in XLA_FLAGS, loaded by path: importing manualbp would import jax."""
    path = Path(__file__).resolve().parents[1] / "manualbp" / "cli" / "xla_flags.py"
    spec = importlib.util.spec_from_file_location("_manualbp_xla_flags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.use_fast_compile()


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise StepTimeout in this (main) thread once ``seconds`` have passed (at the next Python bytecode)."""
    def expire(signum, frame):
        raise StepTimeout(f"over its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Run:
    """The results so far, written to DIR after every step."""

    def __init__(self, out: Path, deadline: float, mode: str):
        self.out, self.deadline, self.mode = out, deadline, mode
        self.data = {"mode": mode, "started": datetime.datetime.now().isoformat(timespec="seconds"), "steps": {}}
        self.tables = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, status: str, seconds: float, result=None, reason: str | None = None, table=None):
        self.data["steps"][name] = {"status": status, "seconds": round(seconds, 2), "reason": reason, "result": result}
        if table:
            self.tables[name] = table
        print(f"[device check] {name}: {status} in {seconds:.1f} s" + (f" ({reason})" if reason else ""), flush=True)
        self.write()

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "device_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "device_check.md").write_text(markdown(self.data, self.tables))

    def step(self, name: str, limit: float, fn, partial=None):
        """Run ``fn() -> (result, table)`` within min(limit, time left); skip it if under a quarter of it is left.
        ``partial``: a dict ``fn`` fills as it goes, recorded if the step is cut."""
        budget = min(limit, self.left())
        if budget < 0.25 * limit:
            self.record(name, "skipped", 0.0, reason=f"{self.left():.0f} s left of the check's {TOTAL_S} s, the step "
                                                      f"may take {limit:.0f} s")
            return None
        t0 = time.monotonic()
        try:
            with time_limit(budget):
                result, table = fn()
        except StepTimeout as e:
            self.record(name, "timed out", time.monotonic() - t0, reason=str(e), result=partial)
            return None
        except Exception as e:  # a failing step (out of memory, a lowering error) must not end the check
            self.record(name, "failed", time.monotonic() - t0, reason=f"{type(e).__name__}: {str(e)[:400]}",
                        result={"traceback": traceback.format_exc()[-2000:]})
            return None
        self.record(name, "ok", time.monotonic() - t0, result=result, table=table)
        return result


def start_checks(models: str, env: dict) -> dict:
    """``manualbp check --json`` per dtype, all at once: {dtype: (process, start time)}."""
    procs = {}
    for dtype in CHECK_DTYPES:
        cmd = [sys.executable, "-m", "manualbp", "check", "--model", models, "--dtype", dtype, "--json", "--no-cache"]
        procs[dtype] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                        time.monotonic())
    return procs


def finish_checks(run: Run, procs: dict, limit: float):
    for dtype, (proc, t0) in procs.items():
        name = f"check {dtype}"
        try:
            out, err = proc.communicate(timeout=max(1.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            run.record(name, "timed out", time.monotonic() - t0, reason=f"killed at its limit of {limit:.0f} s")
            continue
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            run.record(name, "failed", time.monotonic() - t0, reason=f"exit {proc.returncode}: {err.strip()[-400:]}")
            continue
        models = {m: r["status"] for m, r in report["reports"].items()}
        first = {m: r["first_failure"] for m, r in report["reports"].items() if r["first_failure"]}
        run.record(name, "ok" if report["ok"] else "FAIL", time.monotonic() - t0,
                   result={"status": report["status"], "models": models, "first_failing_row": first})


def _max_t(lengths, found: dict):
    """The largest T of ``lengths`` at which each contender's attention step compiles and runs (stops at the first
    failure, e.g. out of memory); ``found`` holds the figures so far (a step cut short keeps them)."""
    import jax
    import jax.numpy as jnp

    from manualbp.cli.benchmarks import attention
    from manualbp.cli.benchmarks.contenders import value_and_grad_steps
    from manualbp.cli.benchmarks.timing import block
    from manualbp.layers.attention import MultiHeadAttention
    from manualbp.layers.heads import MeanSquaredError
    from manualbp.layers.sequential import Sequential

    model = Sequential(MultiHeadAttention(attention.HEADS, causal=True))
    head = MeanSquaredError()
    largest, why = found.setdefault("largest", {"manual": None, "jax.grad": None}), found.setdefault("failed", {})
    for T in lengths:
        params = jax.jit(lambda k, T=T: model.init(k, (T, attention.D), jnp.float32)[0])(jax.random.key(0))
        x = jax.random.normal(jax.random.key(1), (attention.B, T, attention.D), jnp.float32)
        for who, step in value_and_grad_steps(model, head).items():
            if who in why:
                continue
            try:
                block(step(params, x, x))
                largest[who] = T
            except Exception as e:  # out of memory (XlaRuntimeError RESOURCE_EXHAUSTED) or the like
                why[who] = f"T={T}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        del params, x
    table = "\n".join([f"### The largest T of one attention layer's step (B={attention.B}, D={attention.D}, "
                       f"{attention.HEADS} heads, float32, T in {', '.join(map(str, lengths))})", "",
                       "| contender | largest T that ran | first T that did not |", "|---|---|---|"]
                      + [f"| {who} | {largest[who]} | {why.get(who, 'none up to ' + str(lengths[-1]))} |"
                         for who in largest])
    return {"lengths": list(lengths), "largest": largest, "failed": why}, table


def markdown(data: dict, tables: dict) -> str:
    """The tables for BENCHMARKS.md's GPU section (docs/gpu.md says how to use them)."""
    m = data.get("machine", {})
    lines = [f"## On a {m.get('backend', '?').upper()}: {m.get('device', '?')}, jax {m.get('jax', '?')}, "
             f"{data['started'][:10]} (`make gpu-check`, {data['mode']} sizes)", ""]
    if data.get("precision"):
        lines += [f"Matmul precision: {data['precision']}.", ""]
    checks = [(n, s) for n, s in data["steps"].items() if n.startswith("check ")]
    if checks:
        lines += ["| `manualbp check` | status | models | seconds |", "|---|---|---|---|"]
        for n, s in checks:
            models = ", ".join(f"{k} {v}" for k, v in ((s.get("result") or {}).get("models") or {}).items())
            lines.append(f"| {n[6:]} | {s['status']} | {models or s.get('reason') or ''} | {s['seconds']:.0f} |")
        lines.append("")
    for table in tables.values():
        lines += [table, ""]
    other = [(n, s) for n, s in data["steps"].items() if s["status"] not in ("ok", "FAIL") and not n.startswith("check ")]
    if other:
        lines += ["Not measured: " + "; ".join(f"{n} {s['status']} ({s['reason']})" for n, s in other) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="tiny sizes (the default without an accelerator)")
    size.add_argument("--full", action="store_true", help="the benchmarks' own sizes (the default on an accelerator)")
    parser.add_argument("--total-s", type=float, default=TOTAL_S, help="time for the whole check")
    args = parser.parse_args(argv)
    t_start = time.monotonic()
    if args.small:  # nothing is timed for its figures: XLA's cheapest compiling (manualbp check's flags), here and below
        use_fast_compile()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                       os.environ.get("PYTHONPATH")])))

    import jax

    accelerator = jax.default_backend() != "cpu"
    mode = "small" if args.small or not (accelerator or args.full) else "full"
    cfg = SMALL if mode == "small" else FULL
    run = Run(Path(args.out), t_start + args.total_s, mode)
    procs = start_checks(cfg["check_models"], env)  # first: they compile while this process starts its device

    from manualbp.cli.benchmarks import attention, cnn, conv_layers, gpt, mlp, recurrent
    from manualbp.cli.benchmarks.timing import machine

    run.data["machine"] = machine()
    run.data["devices"] = [str(d) for d in jax.devices()]
    run.data["precision"] = jax.config.jax_default_matmul_precision or "jax's default (TF32 for float32 on a GPU)"
    print(f"[device check] {mode} sizes on {jax.default_backend()} {run.data['machine']['device']}, "
          f"{len(jax.devices())} device(s), jax {jax.__version__}, python {sys.version.split()[0]}", flush=True)
    run.write()
    finish_checks(run, procs, cfg["check_s"])

    reps = cfg["repeats"]

    def bench(module, **kwargs):
        return lambda: (lambda r: (r, module.markdown(r)))(module.run(repeats=reps, **kwargs))

    for dtype in ("float32", "bfloat16"):
        run.step(f"gpt {dtype}", cfg["gpt_s"], bench(gpt, dtype=dtype, **cfg["gpt"]))
        run.step(f"attention {dtype}", cfg["attention_s"], bench(attention, dtypes=(dtype,), **cfg["attention"]))
    found = {}
    run.step("attention largest T", cfg["max_t_s"], lambda: _max_t(cfg["max_t"], found), partial=found)
    for name, module in (("mlp", mlp), ("cnn", cnn), ("recurrent", recurrent), ("conv_layers", conv_layers)):
        run.step(name, cfg["small_s"], bench(module, **cfg[name]))
    run.data["seconds"] = round(time.monotonic() - t_start, 1)
    run.write()
    print((run.out / "device_check.md").read_text())
    bad = [n for n, s in run.data["steps"].items() if s["status"] != "ok"]
    print(f"[device check] {len(run.data['steps']) - len(bad)} of {len(run.data['steps'])} steps ok in "
          f"{run.data['seconds']:.0f} s" + (f"; not ok: {', '.join(bad)}" if bad else "") +
          f"; results in {run.out}/device_check.json and device_check.md", flush=True)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
