"""`manualbp check` for a newcomer: the first screen explains itself, --help gives every default, and compiled
programs are cached so a second run skips compiling."""

import argparse
import os
import subprocess
import sys

import pytest

from manualbp.cli import build_parser, main
from manualbp.cli.check import default_cache_dir


def _check_parser():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["check"]


def test_after_the_tables_one_line_per_model_and_a_legend(capsys):
    assert main(["check", "--model", "mlp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = lines[lines.index(next(line for line in lines if line.startswith("mlp  "))):]
    assert summary[0].startswith("mlp  PASS  25 rows  (MLP 16-16-16-10")
    assert summary[1].startswith("legend: max|diff| = max |manual - jax.grad|")
    assert "norm rel = ||manual - jax.grad||" in summary[2] and "ok = norm rel <= 1e-05 and max rel <= 5e-03" in summary[2]
    assert "ok (cond)" in summary[2]
    assert "the first FAIL is where an error enters" in summary[3]
    assert summary[4].startswith("PASS: 1 of 1 reports pass, in ")
    assert len(summary) == 5


def test_a_failing_model_names_its_first_failing_row(capsys, monkeypatch):
    import jax.numpy as jnp

    import manualbp as mbp
    from manualbp import models
    from manualbp.cli import check as check_command
    from manualbp.layers.activations import Tanh

    class WrongTanh(Tanh):
        def backward(self, params, cache, dy):
            return {}, dy * (1 - cache)  # should be 1 - y^2

    mbp.register_reference(WrongTanh, lambda layer, params, x: jnp.tanh(x))

    def wrong():
        b = models.mlp()
        return b._replace(model=mbp.Sequential(mbp.Dense(16), WrongTanh(), mbp.Dense(10)))

    monkeypatch.setitem(models.MODELS, "wrong", wrong)
    monkeypatch.setattr(check_command, "CHECK_MODELS", (*check_command.CHECK_MODELS, "wrong"))  # --model's choices
    assert main(["check", "--model", "wrong"]) == 1
    out = capsys.readouterr().out
    assert "wrong  FAIL  first failing row: 1 WrongTanh dL/dx  (MLP" in out
    assert out.rstrip().splitlines()[-1].startswith("FAIL: 0 of 1 reports pass")


def _option_blocks(help_text):
    """{option string: its lines in --help}."""
    blocks, current = {}, None
    for line in help_text.split("options:")[1].split("\n\n")[0].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current:
            blocks[current] += " " + line.strip()
    return blocks


def test_help_gives_every_flag_and_its_default():
    parser = _check_parser()
    blocks = _option_blocks(parser.format_help())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        block = blocks[action.option_strings[0]]
        assert action.help and action.help.split()[0] in block
        if action.default is not argparse.SUPPRESS:  # --no-cache has none of its own: it sets --cache-dir
            assert "(default: " in block, block
    assert "MANUALBP_CACHE_DIR" in parser.epilog and "xla_backend_optimization_level=0" in parser.epilog


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv("MANUALBP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    if sys.platform not in ("darwin", "win32"):
        assert default_cache_dir() == os.path.join("/somewhere/cache", "manualbp", "xla")
    monkeypatch.setenv("MANUALBP_CACHE_DIR", "/my/dir")
    assert default_cache_dir() == "/my/dir"
    monkeypatch.setenv("MANUALBP_CACHE_DIR", "")
    assert default_cache_dir() == ""  # empty: no cache
    assert _check_parser().parse_args(["--no-cache"]).cache_dir == ""


def test_unusable_cache_dir_is_a_note_not_an_error(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["check", "--model", "mlp", "--cache-dir", str(blocker / "xla")]) == 0
    captured = capsys.readouterr()
    assert "manualbp check: not caching compiled programs" in captured.err
    assert "cached in" not in captured.out


@pytest.mark.slow
def test_second_run_compiles_nothing_new(tmp_path):
    """A fresh process fills the cache; a second one finds every program there (it writes no new entry)."""
    cache = tmp_path / "xla"
    env = {k: v for k, v in os.environ.items() if k != "MANUALBP_CACHE_DIR"}
    argv = [sys.executable, "-m", "manualbp", "check", "--model", "mlp", "--cache-dir", str(cache)]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"compiled programs cached in {cache}" in first.stdout
    entries = set(os.listdir(cache))
    assert entries
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert set(os.listdir(cache)) == entries
