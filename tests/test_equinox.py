"""A manual layer inside an equinox Module through as_function: trained with optax, gradients equal pure equinox's.

Skipped when equinox is not installed (``pip install "manualbp[equinox]"``; ``make test`` installs it).
"""

import jax
import jax.numpy as jnp
import optax
import pytest

import manualbp as mbp
from manualbp.verify.verdict import judge

eqx = pytest.importorskip("equinox")


class PureEquinox(eqx.Module):
    """Linear 3->8 -> LayerNorm -> tanh -> Linear 8->2: equinox's own layers (one example at a time, vmapped)."""

    lin1: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    lin2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.lin1 = eqx.nn.Linear(3, 8, key=k1, dtype=jnp.float64)
        self.norm = eqx.nn.LayerNorm(8, eps=1e-5, dtype=jnp.float64)
        self.lin2 = eqx.nn.Linear(8, 2, key=k2, dtype=jnp.float64)

    def __call__(self, x):
        return jax.vmap(self.lin2)(jnp.tanh(jax.vmap(self.norm)(jax.vmap(self.lin1)(x))))


class WithManualNorm(eqx.Module):
    """The same network with manualbp's LayerNorm (hand-written backward), which takes the whole batch."""

    lin1: eqx.nn.Linear
    params: dict
    lin2: eqx.nn.Linear
    norm: mbp.LayerNorm = eqx.field(static=True)

    def __call__(self, x):
        h = mbp.as_function(self.norm)(self.params, jax.vmap(self.lin1)(x))
        return jax.vmap(self.lin2)(jnp.tanh(h))


def test_manual_layernorm_in_an_equinox_module_trains_like_equinox():
    pure = PureEquinox(jax.random.key(0))
    manual = WithManualNorm(pure.lin1, {"gamma": pure.norm.weight, "beta": pure.norm.bias}, pure.lin2,
                            mbp.LayerNorm(epsilon=1e-5))
    x = jax.random.normal(jax.random.key(1), (6, 3), jnp.float64)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    optimizer = optax.adam(1e-2)

    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    @eqx.filter_jit
    def step(model, state):
        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = optimizer.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, value, grads

    pairs = lambda m, p: [(m.lin1.weight, p.lin1.weight), (m.lin1.bias, p.lin1.bias),  # noqa: E731
                          (m.params["gamma"], p.norm.weight), (m.params["beta"], p.norm.bias),
                          (m.lin2.weight, p.lin2.weight), (m.lin2.bias, p.lin2.bias)]
    state_m = optimizer.init(eqx.filter(manual, eqx.is_array))
    state_p = optimizer.init(eqx.filter(pure, eqx.is_array))
    tol = mbp.tolerance(jnp.float64)
    losses = []
    for t in range(4):
        manual, state_m, value, grads = step(manual, state_m)
        pure, state_p, value_p, grads_p = step(pure, state_p)
        assert judge("net", f"loss step {t}", value, value_p, tol).ok
        for i, (g, gp) in enumerate(pairs(grads, grads_p)):
            row = judge("net", f"grad {i} step {t}", g, gp, tol)
            assert row.ok, row
        losses.append(float(value))
    assert losses[-1] < losses[0]  # it trains
    for i, (w, wp) in enumerate(pairs(manual, pure)):
        assert judge("net", f"param {i}", w, wp, tol).ok
