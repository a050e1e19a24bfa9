"""The README's "Beyond the built-ins" examples run as written and show what they claim."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp.verify.verdict import judge

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SECTION = README.read_text().split("## Beyond the built-ins", 1)[1].split("\n## ", 1)[0]
CODE = re.findall(r"```python\n(.*?)```", SECTION, re.S)
SHOWN = re.findall(r"```\n(check_vjp:.*?)```", SECTION, re.S)[0]


def test_the_log_sum_exp_example_passes_the_right_rule_and_names_the_wrong_one(capsys):
    with jax.enable_x64(False):  # as a user runs it: jax's default float32
        exec(compile(CODE[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "PASS: all 5 compared rows within tolerance" in out
    assert "FAIL: 2 of 5 rows; first failing row: lse x:" in out  # x, and "x linear in cotangent": dy forgotten
    for line in SHOWN.splitlines()[3:8]:  # the README's rows: the same names, shapes and verdicts
        assert line.split()[:3] + line.split()[-1:] in [row.split()[:3] + row.split()[-1:] for row in out.splitlines()]


def test_the_equinox_example_gives_the_twins_gradients():
    pytest.importorskip("equinox")
    ns = {}
    with jax.enable_x64(False):
        exec(compile(CODE[1], "README.md", "exec"), ns)
        _, want = mbp.reference.value_and_grad(ns["model"], mbp.SoftmaxCrossEntropy())(ns["net"].params, ns["x"], ns["y"])
    got = ns["grads"].params
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == jnp.float32
        assert judge("Net", "grad", g, w, mbp.tolerance(jnp.float32)).ok
