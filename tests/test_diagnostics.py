"""gradient_flow: every number on a tiny network worked out by hand; per-step norms; non-finite rows flagged."""

import json
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp.verify.verdict import judge

F64 = jnp.float64


def _close(got, want):
    """Scalar agreement at the float64 tolerance of the comparison report."""
    return judge("hand", "value", got, want, mbp.tolerance(F64)).ok


def _tiny():
    """x (2, 2) -> Dense W1 (no bias) -> ReLU -> Dense W2 (no bias) -> MSE against y.

    z1 = x W1 = [[1, -3], [3, -7]]; relu -> a = [[1, 0], [3, 0]] (unit 1 never positive: dead)
    out = a W2 = [[2], [6]]; r = out - y = [[1], [2]]; L = (1 + 4) / (2 * 2) = 1.25
    dout = r / 2 = [[.5], [1]]            ||dout|| = sqrt(1.25)
    dW2 = a^T dout = [[3.5], [0]]         ||dW2|| = 3.5, ||W2|| = sqrt(5)
    da = dout W2^T = [[1, .5], [2, 1]]    ||da|| = 2.5
    dz1 = da [z1 > 0] = [[1, 0], [2, 0]]  ||dz1|| = sqrt(5)
    dW1 = x^T dz1 = [[7, 0], [10, 0]]     ||dW1|| = sqrt(149), ||W1|| = sqrt(3)
    dx = dz1 W1^T = [[1, 0], [2, 0]]      ||dx|| = sqrt(5)
    """
    model = mbp.Sequential(mbp.Dense(2, use_bias=False), mbp.ReLU(), mbp.Dense(1, use_bias=False))
    params = ({"W": jnp.array([[1.0, -1.0], [0.0, -1.0]], F64)}, {}, {"W": jnp.array([[2.0], [1.0]], F64)})
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]], F64)
    y = jnp.array([[1.0], [4.0]], F64)
    return model, params, x, y


def test_numbers_by_hand():
    model, params, x, y = _tiny()
    flow = mbp.gradient_flow(model, mbp.MeanSquaredError(), params, x, y, lr=0.1)
    assert flow.ok and _close(flow.loss, 1.25)
    d2, relu, d1 = flow.row("2 Dense"), flow.row("1 ReLU"), flow.row("0 Dense")
    assert _close(d2.dy_norm, math.sqrt(1.25)) and _close(d2.dx_norm, 2.5)
    assert _close(d2.grad_norm, 3.5) and _close(d2.weight_norm, math.sqrt(5))
    assert _close(d2.update_ratio, 0.1 * 3.5 / math.sqrt(5))
    assert _close(relu.dy_norm, 2.5) and _close(relu.dx_norm, math.sqrt(5))
    assert relu.grad_norm is None and relu.update_ratio is None
    assert relu.saturated == 0.5 and relu.saturation == "dead ReLU"
    assert _close(d1.dy_norm, math.sqrt(5)) and _close(d1.dx_norm, math.sqrt(5))
    assert _close(d1.grad_norm, math.sqrt(149)) and _close(d1.weight_norm, math.sqrt(3))
    assert _close(d1.update_ratio, 0.1 * math.sqrt(149) / math.sqrt(3))
    assert d1.saturated is None
    table = str(flow)
    assert "1 ReLU" in table and "50.0% dead ReLU" in table and "all values finite" in table
    json.dumps(flow.to_dict())


@pytest.mark.parametrize(("act", "what"), [(mbp.Sigmoid(), "sigmoid'<0.01"), (mbp.Tanh(), "tanh'<0.01")])
def test_saturation_fraction(act, what):
    # |x| = 10 saturates both (sigmoid' ~ 4.5e-5, tanh' ~ 8e-9); x = 0 and 0.5 do not
    model = mbp.Sequential(act)
    x = jnp.array([[0.0, 10.0], [0.5, -10.0]], F64)
    flow = mbp.gradient_flow(model, mbp.MeanSquaredError(), ({},), x, jnp.zeros_like(x), jit=False)
    row = flow.row("0 " + act.name)
    assert row.saturated == 0.5 and row.saturation == what


@dataclass(frozen=True)
class _Steps(mbp.Layer):
    """Identity on (B, T, D) that exposes dL/dh_t = 2 dy_t as a per-step extra (like a recurrent layer)."""

    def forward(self, params, x):
        return x, None

    def backward(self, params, cache, dy):
        return {}, dy

    def backward_trace(self, params, cache, dy):
        return {}, dy, {"h": 2 * dy}


def test_per_timestep_norms():
    # MSE against 0 over N = B T = 3 examples: dL/dy_t = x_t / 3, so ||dL/dh_t|| = 2 |x_t| / 3
    x = jnp.array([[[3.0], [-6.0], [1.5]]], F64)
    flow = mbp.gradient_flow(mbp.Sequential(_Steps()), mbp.MeanSquaredError(), ({},), x, jnp.zeros_like(x))
    norms = flow.row("0 _Steps").timestep_norms["h"]
    assert all(_close(got, want) for got, want in zip(norms, [2.0, 4.0, 1.0], strict=True))
    assert "0 _Steps ||dL/dh_t||, t = 0..2: 2.00e+00 4.00e+00 1.00e+00" in str(flow)


def test_recurrent_layer_gives_one_norm_per_step():
    model = mbp.Sequential(mbp.RNN(4), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (5, 3), F64)
    x = jnp.ones((2, 5, 3), F64)
    flow = mbp.gradient_flow(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.zeros((2, 5), jnp.int32))
    steps = flow.row("0 RNN").timestep_norms
    assert steps and all(len(v) == 5 for v in steps.values())


def test_non_finite_values_are_flagged_not_raised():
    model, params, x, y = _tiny()
    params = (params[0], {}, {"W": jnp.array([[jnp.inf], [1.0]], F64)})
    flow = mbp.gradient_flow(model, mbp.MeanSquaredError(), params, x, y)
    assert not flow.ok
    assert "non-finite" in flow.row("2 Dense").flagged and "W" in flow.row("2 Dense").flagged
    assert "dL/dy" in flow.row("0 Dense").flagged
    table = str(flow)
    assert "FLAGGED: non-finite" in table and "NON-FINITE" in table
    json.dumps(flow.to_dict())  # inf/nan become strings


def test_zero_weights_give_an_infinite_update_ratio_not_a_crash():
    model, params, x, y = _tiny()
    params = ({"W": jnp.zeros((2, 2), F64)}, {}, params[2])
    flow = mbp.gradient_flow(model, mbp.MeanSquaredError(), params, x, y)
    assert flow.row("0 Dense").update_ratio == 0.0  # dW1 = 0 too: every ReLU unit is dead
    assert flow.row("1 ReLU").saturated == 1.0
