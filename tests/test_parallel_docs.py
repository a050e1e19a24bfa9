"""docs/parallel.md runs as written: its Python block in a fresh interpreter (it sets its own 4 simulated devices),
and every flag its commands show exists."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "parallel.md"
CACHE_VARIABLES = {"JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_TRACEBACK_IN_LOCATIONS_LIMIT"}


def python_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


@pytest.mark.slow
def test_the_example_checks_and_trains_on_four_devices(tmp_path):
    (code,) = python_blocks()
    # jax's defaults, whatever JAX_* the user set; only the run's compilation cache is kept (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("PASS: all ") and "FAIL" not in done.stdout, done.stdout
    assert lines[1].startswith("2/attn ParallelAttention dL/dx norm rel ") and lines[1].endswith(" ok"), lines[1]
    assert lines[2].startswith("twin PASS: at every one of 30 steps"), lines[2]
    assert lines[3] == "fc1's W on each device: {0: (16, 32), 1: (16, 32), 2: (16, 32), 3: (16, 32)}", lines[3]
    per_device = eval(lines[4].split(": ", 1)[1])  # {device id: bytes}
    assert len(set(per_device.values())) == 1 and len(per_device) == 4


def test_every_flag_the_commands_show_exists():
    from manualbp.cli import build_parser

    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    known = {s for a in train._actions for s in a.option_strings}
    text = " ".join(re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S))
    shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    assert {"--model-parallel", "--num-processes", "--process-id", "--coordinator"} <= shown <= known
