"""``manualbp --help`` (and each subcommand's) answers without importing jax; the CLI speaks in its own flags.

The choices the help lists are plain strings (manualbp/cli/choices.py): checked here against the modules that
define them, so neither can change alone.
"""

import subprocess
import sys

import pytest

from manualbp.cli import choices
from manualbp.cli.check import legend
from manualbp.cli.train import cli_words


@pytest.mark.parametrize("argv", [[], ["check"], ["train"], ["bench"]], ids=["manualbp", "check", "train", "bench"])
def test_help_imports_no_jax(argv):
    code = ("import sys\nfrom manualbp.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('jax imported:', 'jax' in sys.modules)" % [*argv, "--help"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: manualbp" in out and out.strip().endswith("jax imported: False"), out


def test_import_manualbp_alone_imports_no_jax_and_names_resolve_on_use():
    code = ("import sys, manualbp\nprint('jax' in sys.modules)\nmanualbp.Dense\nprint('jax' in sys.modules)\n"
            "print(sorted(set(manualbp.__all__) - set(dir(manualbp))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "[]"], out


def test_the_choices_agree_with_the_modules_that_define_them():
    from manualbp.models import MODELS
    from manualbp.training import zoo
    from manualbp.verify.tolerances import VERDICTS

    assert choices.CHECK_MODELS == tuple(sorted(MODELS))
    assert choices.VERDICTS == tuple(str(v) for v in VERDICTS)
    assert choices.TRAIN_MODELS == zoo.MODEL_NAMES and choices.TRAIN_DATA == zoo.DATA_NAMES
    assert choices.OPTIMIZERS == tuple(sorted(zoo.OPTIMIZERS))


def test_cli_messages_name_the_flags_not_the_api_arguments():
    api = ("checkpoint runs/a: already holds a checkpoint at step 3; resume it (resume=True) or replace it "
           "(overwrite=True)")
    assert cli_words(api) == ("checkpoint runs/a: already holds a checkpoint at step 3; resume it (--resume) or replace "
                              "it (--overwrite)")
    assert cli_words("nothing to resume (drop resume=True to start afresh)") == \
        "nothing to resume (drop --resume to start afresh)"
    assert cli_words("was written with another key; resume with the same key") == \
        "was written with another --seed; resume with the same --seed"
    assert "lower --lr" in cli_words("the manual loss became non-finite at step 4; lower the learning rate")


def test_the_legend_states_the_rule_the_rows_were_judged_by():
    from manualbp.verify.tolerances import Rule, tolerance

    fixed = legend(tolerance("float32"), "float32", Rule.FIXED)
    assert "ok = norm rel <= 1e-05 and max rel <= 5e-03 (float32)" in fixed
    assert "err model" not in fixed and "cond" not in fixed
    model = legend(tolerance("bfloat16"), "bfloat16", Rule.ERROR_MODEL)
    assert "ok (err model) = manual's error against a float64 truth" in model and "ok = norm rel" not in model
    cond = legend(tolerance("float64"), "float64", Rule.CONDITIONING)
    assert "ok = norm rel <= " in cond and "ok (cond) = where jax.grad's own rounding error" in cond
