"""Every Python block of docs/gpu.md runs as written, in a fresh interpreter (as tests/test_readme.py does README's)."""

import os
import pathlib
import subprocess
import sys

import pytest
from test_readme import BLOCK, BUDGET_S, CACHE_VARIABLES

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "gpu.md"
BLOCKS = [(DOC.read_text().count("\n", 0, m.start("code")) + 1, m.group("code")) for m in BLOCK.finditer(DOC.read_text())]


def test_every_python_fence_is_a_block():
    assert len(BLOCKS) == DOC.read_text().count("```python\n") >= 1


@pytest.mark.slow
@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_block_runs_in_a_fresh_interpreter(line, code, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=BUDGET_S)
    assert done.returncode == 0, f"docs/gpu.md block at line {line} failed:\n{done.stderr[-3000:]}"
    assert "FAIL" not in done.stdout and "DIVERGED" not in done.stdout, done.stdout
    assert "twin PASS" in done.stdout and "{'float32'}" in done.stdout and "PASS" in done.stdout.splitlines()[-1]
