"""scripts/device_check.py (``make gpu-check``): the whole check at tiny sizes on the CPU, and its time limits."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manualbp.cli import bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_device_check_runs_every_step_at_tiny_sizes(tmp_path):
    """Run as on a device without the venv: ``python scripts/device_check.py --out DIR`` with PYTHONPATH=."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "device_check.json").read_text())
    steps = data["steps"]
    assert data["mode"] == "small" and data["machine"]["backend"] == "cpu"
    assert list(steps) == ["check float32", "check bfloat16", "check float16", "gpt float32", "attention float32",
                           "gpt bfloat16", "attention bfloat16", "attention largest T", "mlp", "cnn", "recurrent",
                           "conv_layers"]
    assert all(s["status"] == "ok" for s in steps.values()), {n: s["reason"] for n, s in steps.items()}
    for dtype in ("float32", "bfloat16", "float16"):
        assert steps[f"check {dtype}"]["result"]["models"] == {"mlp": "PASS"}
    attention = steps["attention bfloat16"]["result"]["rows"][0]
    assert attention["dtype"] == "bfloat16" and set(attention["times"]) == {"manual", "manual[pallas]", "jax.grad"}
    assert steps["attention largest T"]["result"]["largest"] == {"manual": 16, "jax.grad": 16}
    assert steps["gpt bfloat16"]["result"]["config"]["dtype"] == "bfloat16"
    md = (tmp_path / "device_check.md").read_text()
    assert md.startswith("## On a CPU: cpu, jax ") and "| float16 | ok | mlp PASS |" in md
    for heading in ("### GPT, 1 causal blocks", "### One causal MultiHeadAttention layer", "### The largest T",
                    "### MLP 16-8-8-4", "### CNN", "### RNN, LSTM and GRU", "### Conv1D and ConvTranspose2D"):
        assert heading in md
    assert md in done.stdout  # the tables are printed too


def test_a_step_over_its_limit_is_cut_and_the_next_runs(tmp_path):
    dc = _script()
    run = dc.Run(tmp_path, time.monotonic() + 60, "small")

    def slow():
        while True:
            time.sleep(0.01)

    def broken():
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    assert run.step("slow", 0.3, slow) is None
    assert run.step("broken", 5, broken) is None
    assert run.step("fine", 5, lambda: ({"x": 1}, "### table")) == {"x": 1}
    run.deadline = time.monotonic() + 1  # 1 s left: a step that may take 10 is skipped, not started
    assert run.step("late", 10, lambda: pytest.fail("started")) is None
    steps = json.loads((tmp_path / "device_check.json").read_text())["steps"]
    assert [steps[n]["status"] for n in ("slow", "broken", "fine", "late")] == ["timed out", "failed", "ok", "skipped"]
    assert steps["slow"]["seconds"] < 2 and "RESOURCE_EXHAUSTED" in steps["broken"]["reason"]
    md = (tmp_path / "device_check.md").read_text()
    assert "### table" in md and "slow timed out" in md and "late skipped" in md


def test_bench_kernels_and_dtype_options():
    assert bench._kernels("auto, pallas") == ("auto", "pallas")
    with pytest.raises(argparse.ArgumentTypeError, match="expected attention kernels from auto, loop, batched, pallas"):
        bench._kernels("auto,flash")
    args = argparse.Namespace(kernels=("batched", "loop"), dtype="bfloat16")
    assert bench.options("attention", args) == {"kernels": ("batched", "loop"), "dtypes": ("bfloat16",)}
    assert bench.options("gpt", args) == {"kernel": "batched", "dtype": "bfloat16"}
    assert bench.options("mlp", args) == {}
