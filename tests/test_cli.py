"""`manualbp check` end to end (in process; `python -m manualbp` once in a subprocess)."""

import json
import subprocess
import sys

import pytest

from manualbp.cli import main


def test_check_mlp_prints_a_passing_table(capsys):
    assert main(["check", "--model", "mlp", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "0 Dense" in out and "dL/dx" in out and "PASS" in out


def test_check_json_with_gradcheck(capsys):
    assert main(["check", "--model", "mlp", "--dtype", "float64", "--json", "--gradcheck"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is True and set(d["reports"]) == {"mlp", "mlp (finite differences)"}
    assert d["reports"]["mlp"]["dtype"] == "float64"


def test_bad_arguments_exit_2(capsys):
    for argv in (["check", "--model", "nope"], ["check", "--batch-size", "0"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "--batch-size: must be >= 1, got 0" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "manualbp", "check", "--model", "mlp"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stdout


def test_train_subcommand_end_to_end(capsys):
    assert main(["train", "--model", "mlp", "--data", "spirals", "--grad", "twin", "--steps", "20", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["grad"], d["steps"], d["divergence"]["ok"]) == ("twin", 20, True)
    assert set(d["test"]) == {"manual", "reference"}


def test_check_in_low_precision_uses_the_error_model(capsys):
    assert main(["check", "--model", "mlp", "--dtype", "bfloat16", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    report = d["reports"]["mlp"]
    assert (d["status"], report["dtype"], report["verdict"], report["status"]) == ("PASS", "bfloat16", "error-model", "PASS")
    assert all(row["err_manual"] is not None and row["err_ref"] is not None for row in report["rows"])
    assert main(["check", "--model", "mlp", "--dtype", "float64", "--verdict", "error-model"]) == 2
    assert "float64 has none" in capsys.readouterr().err
