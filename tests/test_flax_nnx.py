"""A manual layer inside a flax nnx.Module through as_function: trained with optax, gradients equal pure flax's.

Skipped when flax is not installed (``pip install "manualbp[flax]"``; ``make test`` installs it).
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import manualbp as mbp
from manualbp.verify.verdict import judge

nnx = pytest.importorskip("flax.nnx")

F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}


class PureFlax(nnx.Module):
    """Conv 3x3 (4 features, SAME) -> ReLU -> Linear: flax's own layers, differentiated by jax.grad."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), padding="SAME", rngs=rngs, **F64)
        self.linear = nnx.Linear(4 * 4 * 4, 3, rngs=rngs, **F64)

    def __call__(self, x):
        h = nnx.relu(self.conv(x))
        return self.linear(h.reshape(h.shape[0], -1))


class WithManualConv(nnx.Module):
    """The same network with manualbp's Conv2D (hand-written backward) in place of nnx.Conv, same weights."""

    def __init__(self, pure: PureFlax):
        self.conv = mbp.Conv2D(4, 3, padding="SAME")  # a frozen dataclass: static, hashable
        self.W = nnx.Param(pure.conv.kernel[...])  # (3, 3, 1, 4): flax's HWIO is manualbp's
        self.b = nnx.Param(pure.conv.bias[...])
        self.linear = nnx.clone(pure.linear)

    def __call__(self, x):
        h = nnx.relu(mbp.as_function(self.conv)({"W": self.W[...], "b": self.b[...]}, x))
        return self.linear(h.reshape(h.shape[0], -1))


def test_manual_conv_in_an_nnx_module_trains_like_flax():
    pure = PureFlax(nnx.Rngs(0))
    manual = WithManualConv(pure)
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 1), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2])

    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value, grads

    opt_m = nnx.Optimizer(manual, optax.adam(1e-2), wrt=nnx.Param)
    opt_p = nnx.Optimizer(pure, optax.adam(1e-2), wrt=nnx.Param)
    tol = mbp.tolerance(jnp.float64)
    pairs = lambda m, p: [(m["W"], p["conv"]["kernel"]), (m["b"], p["conv"]["bias"]),  # noqa: E731
                          (m["linear"]["kernel"], p["linear"]["kernel"]), (m["linear"]["bias"], p["linear"]["bias"])]
    losses = []
    for t in range(4):
        value, grads = step(manual, opt_m)
        value_p, grads_p = step(pure, opt_p)
        assert judge("net", f"loss step {t}", value, value_p, tol).ok
        for i, (g, gp) in enumerate(pairs(grads, grads_p)):
            row = judge("net", f"grad {i} step {t}", g[...], gp[...], tol)
            assert row.ok, row
        losses.append(float(value))
    assert losses[-1] < losses[0]  # it trains
    for i, (w, wp) in enumerate(pairs(nnx.state(manual, nnx.Param), nnx.state(pure, nnx.Param))):
        assert judge("net", f"param {i}", w[...], wp[...], tol).ok



def test_the_docs_example_with_a_params_dict_in_one_param_trains_past_the_first_update(capsys):
    """docs/extending.md's nnx example, as a user runs it (float32): a manual Dense whose whole params dict sits in
    ONE nnx.Param, trained with optax beside the pure flax model. After the first Optimizer.update the dict is an
    nnx.State (the second step used to fail: "expected params to be a dict ... got State"); the example asserts
    that every gradient equals flax's at every step."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    (code,) = re.findall(r"<!-- requires: flax -->\n```python\n(.*?)```", text, re.S)
    ns = {"__name__": "__main__"}
    with jax.enable_x64(False):
        exec(compile(code, "docs/extending.md", "exec"), ns)
    assert capsys.readouterr().out.count("largest gradient difference") == 4
    params = ns["manual"].params.get_value()
    assert type(params).__name__ == "State" and params["W"].dtype == jnp.float32  # what failed before: a State
    mbp.Dense(16).forward(params, ns["x"])  # a layer takes it directly too
