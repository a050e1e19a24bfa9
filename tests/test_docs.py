"""Every Python block of README.md and docs/*.md runs as written, on its own, in a fresh interpreter; the commands
they show exist; the row counts they quote are the ones printed.

A block is a fenced code block opened with three backquotes and ``python``. Each runs in its own
``python -c`` process (jax's default float32, a scratch working directory), must exit 0 without
printing a failing report, and gets a time budget: a block is an example, to run in seconds; the
budget only stops one that hangs or trains for minutes. A comment in a block that quotes a report's
summary (``# PASS: all 104 compared rows ...``) must match what the block prints.

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

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<fails><!-- shows a failure -->\n)?(?:<!-- requires: (?P<requires>[\w., ]+) -->\n)?"
                   r"```python\n(?P<code>.*?)```", re.S)
BUDGET_S = 300
CACHE_VARIABLES = {"JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "JAX_TRACEBACK_IN_LOCATIONS_LIMIT"}
QUOTED = re.compile(r"#\s*(PASS: all \d+ (?:compared )?rows)")  # a summary quoted in a block's comment
EXTRAS = {"equinox", "flax", "sklearn", "matplotlib"}  # optional packages: a block importing one says so


def blocks(doc=None):
    """[(where, required modules, shows a failure, code)] for every Python block, in document order."""
    out = []
    for path in [doc] if doc else DOCS:
        text = path.read_text()
        out += [(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start('code')) + 1}",
                 [r.strip() for r in (m.group("requires") or "").split(",") if r.strip()], bool(m.group("fails")),
                 m.group("code"))
                for m in BLOCK.finditer(text)]
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_fence_is_a_block(doc):
    """A python fence the pattern misses (a marker with a typo, a blank line after it) would never run."""
    assert len(blocks(doc)) == doc.read_text().count("```python\n")


def test_the_documents_have_their_examples():
    assert len(blocks(README)) >= 4 and len(blocks()) >= 10


def _imported(code):
    """The top-level packages a block imports."""
    names = set()
    for line in code.splitlines():
        if m := re.match(r"\s*import\s+(.*)", line):
            names |= {part.split()[0].split(".")[0] for part in m.group(1).split(",") if part.strip()}
        elif m := re.match(r"\s*from\s+(\w+)", line):
            names.add(m.group(1))
    return names


def test_every_block_that_imports_an_extra_says_so():
    """A block importing an optional package is marked ``<!-- requires: ... -->``, so it is skipped without it."""
    assert _imported("import equinox as eqx, jax\nfrom flax import nnx\n") == {"equinox", "jax", "flax"}
    for where, requires, _, code in blocks():
        extras = _imported(code) & EXTRAS
        assert extras <= set(requires), f"{where} imports {sorted(extras)} without <!-- requires: ... -->"


@pytest.mark.slow
@pytest.mark.parametrize("where, requires, fails, code", blocks(), ids=[b[0] for b in blocks()])
def test_block_runs_in_a_fresh_interpreter(where, requires, fails, code, tmp_path):
    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"block at {where} requires {', '.join(missing)} (<!-- requires: ... -->)")
    # jax's defaults (float32), whatever JAX_* the user set; only the run's compilation cache is kept (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=BUDGET_S)
    assert done.returncode == 0, f"block at {where} failed:\n{done.stderr[-3000:]}"
    if fails:
        assert "FAIL" in done.stdout, f"block at {where} should show a bug caught:\n{done.stdout}"
    else:
        assert "FAIL" not in done.stdout, f"block at {where} printed a failing report:\n{done.stdout}"
    for quoted in QUOTED.findall(code):
        assert quoted in done.stdout, f"block at {where} quotes {quoted!r} but printed:\n{done.stdout}"
    if where == blocks()[0][0]:  # the README's first example: compare and gradcheck
        assert done.stdout.count("PASS") == 2


def _cli_lines():
    """Every `manualbp <subcommand> ...` synopsis of the documents' sh blocks, continuation lines ("   [--x]") joined."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].rstrip()
            if line.startswith("manualbp "):
                lines.append(line)
            elif lines and line.lstrip().startswith("[") and line.startswith(" "):
                lines[-1] += " " + line.strip()
    return lines


def test_every_flag_the_documents_show_exists():
    """The synopses (`manualbp check [--model all|mlp|...] ...`) name only flags each subcommand accepts."""
    from manualbp.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    lines = _cli_lines()
    assert {line.split()[1] for line in lines} >= {"check", "bench", "train"}
    for line in lines:
        command = line.split()[1]
        known = {s for a in subparsers[command]._actions for s in a.option_strings}
        shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
        assert shown <= known, f"the documents show {sorted(shown - known)} for `manualbp {command}`"


def _anchor(heading):
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "BENCHMARKS.md", ROOT / "CONTRIBUTING.md"], ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    """A link to a moved or renamed document, or to a heading that changed, fails here."""
    assert _anchor("Twin runs: what a twin verdict means") == "twin-runs-what-a-twin-verdict-means"
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", file.read_text(), re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{doc.name} links to {target}: no such heading"
