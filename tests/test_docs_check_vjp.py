"""Every Python block of docs/check_vjp.md runs as written and shows what it claims.

The conventions are the README's (tests/test_readme.py): a block needing an optional package is preceded by
``<!-- requires: module -->`` and skipped without it; one showing a bug caught by ``<!-- shows a failure -->`` must
print a FAIL, every other block must not. The blocks run in ONE fresh interpreter (jax's defaults: float32, no x64),
each in a namespace of its own, so the page's jax start-up and shared programs are paid once. The flax block runs
in-process in tests/test_flax_nnx.py (flax is imported there already; it asserts the gradients itself).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from test_readme import BLOCK, CACHE_VARIABLES

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "check_vjp.md"
DRIVER = """
import contextlib, io, json, sys, traceback
out = []
for code in json.loads(sys.stdin.read()):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "docs/check_vjp.md", "exec"), {"__name__": "__main__"})
        out.append({"ok": True, "stdout": buf.getvalue()})
    except Exception:
        out.append({"ok": False, "stdout": buf.getvalue(), "error": traceback.format_exc()[-3000:]})
print("RESULTS " + json.dumps(out))
"""


def blocks():
    """[(line number, required modules, shows a failure, code)] for every Python block, in page order."""
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1,
             [r.strip() for r in (m.group("requires") or "").split(",") if r.strip()], bool(m.group("fails")),
             m.group("code"))
            for m in BLOCK.finditer(text)]


def test_every_python_fence_is_a_block():
    assert len(blocks()) == DOC.read_text().count("```python\n") >= 6


IN_PROCESS = {"flax": "tests/test_flax_nnx.py"}  # blocks that need these run in those test files


def test_every_block_runs_here_or_in_a_named_test():
    assert {m for b in blocks() for m in b[1]} <= set(IN_PROCESS)
    for module, path in IN_PROCESS.items():
        source = (DOC.parents[1] / path).read_text()
        assert '"check_vjp.md"' in source and f"<!-- requires: {module} -->" in source, path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    runnable = [b for b in blocks() if not b[1]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps([b[3] for b in runnable]),
                          cwd=tmp_path_factory.mktemp("docs"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1])
    return {b[0]: r for b, r in zip(runnable, results)}


@pytest.mark.slow
@pytest.mark.parametrize("line, requires, fails, code", blocks(), ids=[f"line{b[0]}" for b in blocks()])
def test_block_runs_and_shows_what_it_claims(line, requires, fails, code, outputs):
    if line not in outputs:
        pytest.skip(f"docs/check_vjp.md block at line {line} needs {', '.join(requires)}: run by "
                    f"{', '.join(IN_PROCESS[m] for m in requires)}")
    result = outputs[line]
    assert result["ok"], f"docs/check_vjp.md block at line {line} failed:\n{result['error']}"
    if fails:
        assert "FAIL" in result["stdout"], f"block at line {line} should show a bug caught:\n{result['stdout']}"
    else:
        assert "FAIL" not in result["stdout"], f"block at line {line} printed a failing report:\n{result['stdout']}"
    if "forgot_the_mean" in code:  # the planted bug: x fails, the Taylor rate of a wrong derivative is 1
        assert "first failing row: layer_norm x:" in result["stdout"] and "rate 1.0" in result["stdout"]
