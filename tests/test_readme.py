"""Every Python block of README.md runs as written, on its own, in a fresh interpreter; the commands it shows exist.

A block is a fenced code block opened with three backquotes and ``python``. Each runs in its own
``python -c`` process (jax's default float32, a scratch working directory), must exit 0 without
printing a failing report, and gets a time budget: a README block is an example, to run in
seconds; the budget only stops one that hangs or trains for minutes.

The one way out: a block that needs an optional package (an extra such as ``examples``) is
preceded, on the line just before its fence, by ``<!-- requires: module[, module] -->``, and is
skipped when one of those modules cannot be imported. Nothing else skips a block. A block that
shows a bug being caught is preceded by ``<!-- shows a failure -->``: it must then print a FAIL
(and still exit 0).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<fails><!-- shows a failure -->\n)?(?:<!-- requires: (?P<requires>[\w., ]+) -->\n)?"
                   r"```python\n(?P<code>.*?)```", re.S)
BUDGET_S = 300
CACHE_VARIABLES = {"JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_TRACEBACK_IN_LOCATIONS_LIMIT"}


def blocks():
    """[(line number, required modules, shows a failure, code)] for every Python block, in README order."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start("code")) + 1,
             [r.strip() for r in (m.group("requires") or "").split(",") if r.strip()], bool(m.group("fails")),
             m.group("code"))
            for m in BLOCK.finditer(text)]


def test_every_python_fence_is_a_block():
    assert len(blocks()) == README.read_text().count("```python\n") >= 6


@pytest.mark.slow
@pytest.mark.parametrize("line, requires, fails, code", blocks(), ids=[f"line{b[0]}" for b in blocks()])
def test_block_runs_in_a_fresh_interpreter(line, requires, fails, code, tmp_path):
    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"README block at line {line} requires {', '.join(missing)} (<!-- requires: ... -->)")
    # jax's defaults (float32), whatever JAX_* the user set; only the run's compilation cache is kept (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=BUDGET_S)
    assert done.returncode == 0, f"README.md block at line {line} failed:\n{done.stderr[-3000:]}"
    if fails:
        assert "FAIL" in done.stdout, f"README.md block at line {line} should show a bug caught:\n{done.stdout}"
    else:
        assert "FAIL" not in done.stdout, f"README.md block at line {line} printed a failing report:\n{done.stdout}"
    if line == blocks()[0][0]:  # the first example: compare and gradcheck
        assert done.stdout.count("PASS") == 2


def _cli_lines():
    """Every `manualbp <subcommand> ...` synopsis of the README's sh blocks, continuation lines ("   [--x]") joined."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].rstrip()
            if line.startswith("manualbp "):
                lines.append(line)
            elif lines and line.lstrip().startswith("[") and line.startswith(" "):
                lines[-1] += " " + line.strip()
    return lines


def test_every_flag_the_readme_shows_exists():
    """The synopses (`manualbp check [--model all|mlp|...] ...`) name only flags each subcommand accepts."""
    from manualbp.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    lines = _cli_lines()
    assert {line.split()[1] for line in lines} >= {"check", "bench", "train"}
    for line in lines:
        command = line.split()[1]
        known = {s for a in subparsers[command]._actions for s in a.option_strings}
        shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
        assert shown <= known, f"README shows {sorted(shown - known)} for `manualbp {command}`"
