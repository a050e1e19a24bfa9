"""The README's first example runs as written."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    with jax.enable_x64(False):  # as a user runs it: jax's default float32
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "FAIL" not in out
