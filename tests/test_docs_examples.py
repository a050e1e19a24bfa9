"""The custom_vjp examples (README's log-sum-exp, docs/extending.md's equinox module, docs/check_vjp.md's planted
bug) show what they claim."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp.verify.verdict import judge

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION = (ROOT / "README.md").read_text().split("## Checking your own `custom_vjp`", 1)[1].split("\n## ", 1)[0]
EXTENDING = (ROOT / "docs" / "extending.md").read_text()
CODE = [re.findall(r"```python\n(.*?)```", SECTION, re.S)[0],
        next(c for c in re.findall(r"```python\n(.*?)```", EXTENDING, re.S) if "import equinox" in c)]
SHOWN = re.findall(r"```\n(check_vjp:.*?)```", SECTION, re.S)[0]
CHECK_VJP = (ROOT / "docs" / "check_vjp.md").read_text()


def test_the_log_sum_exp_example_passes_the_right_rule_and_names_the_wrong_one(capsys):
    with jax.enable_x64(False):  # as a user runs it: jax's default float32
        exec(compile(CODE[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "PASS: all 5 compared rows within tolerance" in out
    assert "FAIL: 2 of 5 rows; first failing row: lse x:" in out  # x, and "x linear in cotangent": dy forgotten
    for line in SHOWN.splitlines()[3:8]:  # the README's rows: the same names, shapes and verdicts
        assert line.split()[:3] + line.split()[-1:] in [row.split()[:3] + row.split()[-1:] for row in out.splitlines()]


def test_the_no_reference_example_fails_the_forgotten_term_on_x_at_taylor_rate_one(capsys):
    code = next(c for c in re.findall(r"```python\n(.*?)```", CHECK_VJP, re.S) if "forgot_the_mean" in c)
    with jax.enable_x64(False), jax.numpy_rank_promotion("allow"):  # as a user runs it: jax's defaults
        exec(compile(code, "docs/check_vjp.md", "exec"), {})
    out = capsys.readouterr().out
    assert "first failing row: layer_norm x:" in out and "rate 1.0" in out, out


def test_the_equinox_example_gives_the_twins_gradients():
    pytest.importorskip("equinox")
    ns = {}
    with jax.enable_x64(False):
        exec(compile(CODE[1], "docs/extending.md", "exec"), ns)
        _, want = mbp.reference.value_and_grad(ns["model"], mbp.SoftmaxCrossEntropy())(ns["net"].params, ns["x"], ns["y"])
    got = ns["grads"].params
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == jnp.float32
        assert judge("Net", "grad", g, w, mbp.tolerance(jnp.float32)).ok
