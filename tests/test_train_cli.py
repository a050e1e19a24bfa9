"""``manualbp train`` and ``manualbp bench --help``: exit codes, paths checked before step 1, strict JSON, resume rules."""

import json
import math

import numpy as np
import pytest

import manualbp as mbp
from manualbp.cli import main
from manualbp.cli.train_summary import plot
from manualbp.training.twin import Divergence

SPIRALS = ["train", "--model", "mlp", "--data", "spirals"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_twin_json_is_strict_and_names_the_metric(capsys):
    code, out, err = _run(capsys, [*SPIRALS, "--grad", "twin", "--steps", "5", "--batch-size", "32", "--dtype",
                                   "float64", "--clip", "1.0", "--json"])
    assert code == 0 and err == ""  # no progress bar: stderr is not a terminal here
    summary = _strict(out)
    assert summary["ok"] and summary["divergence"]["ok"] and summary["steps"] == 5 and summary["clip"] == 1.0
    assert summary["metric"] == "accuracy" and set(summary["test"]["manual"]) == {"accuracy"}


def test_twin_calls_nan_diverged_and_exits_1(capsys):
    # the command: before, "twin PASS ... max rel 0.00e+00, max abs -inf" and exit 0
    code, out, _ = _run(capsys, ["train", "--model", "mlp", "--data", "digits", "--steps", "200", "--lr", "1e6",
                                 "--optimizer", "sgd", "--grad", "twin"])
    assert code == 1
    assert "twin DIVERGED: non-finite at step" in out and "PASS" not in out


def test_a_non_finite_loss_is_an_error_naming_the_step(capsys):
    code, out, _ = _run(capsys, ["train", "--model", "mlp", "--data", "digits", "--steps", "60", "--lr", "1e6",
                                 "--optimizer", "sgd", "--json"])
    error = _strict(out)["error"]
    assert code == 1 and error.startswith("the manual loss became non-finite at step ")


@pytest.mark.parametrize("extra, message", [
    (["--plot", "no/such/dir/curves.png"], "directory .*no/such/dir does not exist"),
    (["--plot", "curves.xyz"], r"unsupported extension \.xyz; use one of .*\.png"),
    (["--plot", "."], "is a directory"),
    (["--checkpoint", "afile"], "is a file, not a directory"),
    (["--checkpoint", "afile/sub"], "cannot write there"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint DIR"),
    (["--resume"], "--resume needs --checkpoint DIR"),
    (["--seq-len", "10"], "--seq-len applies to --data adding only"),
    (["--batch-size", "5000"], "batch_size 5000 is larger than the data"),
])
def test_bad_paths_and_settings_fail_before_step_1(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    code, out, err = _run(capsys, [*SPIRALS, "--steps", "100000", *extra])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("manualbp train: ") and "train: train:" not in err
    assert __import__("re").search(message, err), err
    code, out, _ = _run(capsys, [*SPIRALS, "--steps", "100000", *extra, "--json"])
    assert code == 2 and "error" in _strict(out)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr: must be a finite number, got inf"),
    (["--lr", "nan"], "--lr: must be a finite number, got nan"),
    (["--clip", "-1"], "--clip: must be > 0"),
    (["--seed", str(2**64)], "--seed: must be an integer in \\[0, 2\\*\\*64\\)"),
    (["--seed", "-1"], "--seed: must be an integer in \\[0, 2\\*\\*64\\)"),
])
def test_argparse_rejects_non_finite_rates_and_wide_seeds(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main([*SPIRALS, *argv])
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main([*SPIRALS, *argv, "--json"])
    assert "error" in _strict(capsys.readouterr().out)


def test_checkpoint_rules_on_the_command_line(capsys, tmp_path):
    run = str(tmp_path / "run")
    first = [*SPIRALS, "--steps", "6", "--batch-size", "64", "--seed", str(2**40), "--checkpoint", run]
    code, out, _ = _run(capsys, first)
    assert code == 0 and out.startswith("test accuracy: ")
    code, _, err = _run(capsys, first)
    assert code == 2 and "already holds a checkpoint at step 6" in err and "--overwrite" in err
    code, _, err = _run(capsys, [*first, "--resume", "--lr", "0.5"])
    assert code == 2 and "was written with lr 0.01 (this run: 0.5)" in err
    code, _, err = _run(capsys, [*first, "--resume", "--steps", "4"])
    assert code == 2 and "is at step 6, beyond the 4 steps asked for" in err
    code, out, _ = _run(capsys, [*first[:6], "10", *first[7:], "--resume", "--json"])
    assert code == 0 and _strict(out)["resumed_from"] == 6 and _strict(out)["steps"] == 10


def test_ctrl_c_saves_and_exits_130(capsys, tmp_path, monkeypatch):
    import signal

    from manualbp.cli import train as cli_train

    class CtrlCAtStep3(cli_train.Progress):
        def __call__(self, step, values):
            if step == 3:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli_train, "Progress", CtrlCAtStep3)
    code, _, err = _run(capsys, [*SPIRALS, "--steps", "100", "--checkpoint", str(tmp_path)])
    assert code == 130 and f"interrupted after step 3; checkpoint saved in {tmp_path} (continue with --resume)" in err


def test_plot_writes_a_png(tmp_path):
    png = tmp_path / "curves.png"
    steps = np.arange(1, 6, dtype=float)
    history = {"manual": {"loss": 1 / steps}, "reference": {"loss": 1 / steps}}
    n = (5, 1)
    tol = mbp.tolerance(np.float64)
    dv = Divergence(["0/W"], 1e-15 * np.ones(n), np.zeros(n), np.zeros(5), np.zeros(n), 1e-16 * steps[:, None],
                    np.ones((5, 2, 1), bool), np.ones((5, 2)), "float64", tol)
    plot(str(png), history, dv, "mlp on spirals")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_help_describes_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag, default in (("--model", "all"), ("--repeats", "30"), ("--json", "False")):
        assert flag in text and f"default: {default}" in text, text


def test_strict_json_turns_non_finite_numbers_into_null():
    from manualbp.cli.train_output import dumps

    assert json.loads(dumps({"a": math.nan, "b": [1.0, math.inf]})) == {"a": None, "b": [1.0, None]}


def test_progress_goes_to_a_terminal_stderr_only_and_json_stdout_stays_strict(monkeypatch, capsys):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main([*SPIRALS, "--steps", "5", "--batch-size", "32", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and _strict(out)["steps"] == 5  # stdout: only the JSON document
    bar = terminal.getvalue()
    assert "5/5" in bar and "loss=" in bar and "accuracy=" in bar, bar  # tqdm's bar, with the metric named


class _X64Turned(Exception):
    pass


@pytest.mark.parametrize("grad, dtype, expected", [("twin", "float32", True), ("manual", "float32", False),
                                                    ("manual", "float64", True)])
def test_x64_is_turned_on_for_float64_and_for_twin_runs(monkeypatch, grad, dtype, expected):
    """A float32 twin run needs float64 to measure the reference's own error (manualbp.training.twin): the CLI turns
    jax_enable_x64 on for it, as for float64, before anything runs; a plain float32 run leaves jax's default."""
    import jax

    update = jax.config.update

    def spy(name, value):
        if name == "jax_enable_x64" and value:
            raise _X64Turned
        return update(name, value)

    monkeypatch.setattr(jax.config, "update", spy)
    argv = [*SPIRALS, "--grad", grad, "--dtype", dtype, "--steps", "1", "--batch-size", "32"]
    if expected:
        with pytest.raises(_X64Turned):
            main(argv)
    else:
        assert main(argv) == 0
