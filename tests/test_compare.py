"""The layer-by-layer report, check_layer with a user's own layer, value_and_grad, and bad input."""

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify.report import compare_arrays


def _mlp(dtype=jnp.float32):
    model = mbp.Sequential(mbp.Dense(8), mbp.ReLU(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), dtype)
    x = jax.random.normal(jax.random.key(1), (4, 5), dtype)
    return model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_report_rows_and_formats(dtype):
    model, head, params, x, y = _mlp(dtype)
    report = mbp.compare(model, head, params, x, y)
    assert report.ok and report.first_failure is None
    expected = {("0 Dense", q) for q in ("forward y", "dL/dy", "dL/dx", "dW", "db")}
    expected |= {("1 ReLU", q) for q in ("forward y", "dL/dy", "dL/dx")}
    expected |= {("model Sequential", "loss"), ("model Sequential", "dL/dx")}
    assert expected <= {(r.layer, r.quantity) for r in report.rows}
    text = str(report)
    assert "0 Dense" in text and "PASS" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is True and d["dtype"] == jnp.dtype(dtype).name and len(d["rows"]) == len(report.rows)


def test_manual_value_and_grad_matches_reference_jit_and_eager():
    model, head, params, x, y = _mlp(jnp.float64)
    loss_r, grads_r = ref.value_and_grad(model, head)(params, x, y)
    tol = mbp.tolerance(jnp.float64)
    for jit in (True, False):
        loss, grads = mbp.value_and_grad(model, head, jit=jit)(params, x, y)
        assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
        assert compare_arrays("m", "loss", loss, loss_r, tol).ok
        for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_r)):
            assert compare_arrays("m", "g", g, r, tol).ok


@dataclass(frozen=True)
class Cube:
    """A user's layer: y = a x^3, with a hand-written backward."""

    wrong: bool = False

    def forward(self, params, x):
        return params["a"] * x**3, x

    def backward(self, params, x, dy):
        da = jnp.sum(dy * x**3)
        dx = dy * params["a"] * (2 if self.wrong else 3) * x**2  # the wrong one forgets the power rule's 3
        return {"a": da}, dx


def test_user_layer_passes_and_wrong_one_names_the_row():
    params = {"a": jnp.float64(1.5)}
    x = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    fn = lambda p, x: p["a"] * jnp.power(x, 3)  # noqa: E731
    good = mbp.check_layer(Cube(), params, x, reference=fn)
    assert good.ok, str(good)
    bad = mbp.check_layer(Cube(wrong=True), params, x, reference=fn)
    assert not bad.ok
    assert (bad.first_failure.layer, bad.first_failure.quantity) == ("Cube", "dL/dx")
    assert bad.row("Cube", "forward y").ok and bad.row("Cube", "da").ok
    assert "first failing row: Cube dL/dx" in str(bad)


def test_wrong_backward_inside_a_model_is_named():
    @dataclass(frozen=True)
    class BadTanh(mbp.Tanh):
        def backward(self, params, cache, dy):
            return {}, dy * (1 - cache)  # should be 1 - y^2

    ref.forward.register(BadTanh)(lambda layer, params, x, taps: jnp.tanh(x))
    model = mbp.Sequential(mbp.Dense(6), BadTanh(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0, 1]))
    assert not report.ok
    assert (report.first_failure.layer, report.first_failure.quantity) == ("1 BadTanh", "dL/dx")
    assert report.row("1 BadTanh", "dL/dy").ok  # the gradient arriving is right; the layer's own rule is wrong


def test_non_finite_inputs_and_gradients():
    model, head, params, x, y = _mlp()
    f = mbp.value_and_grad(model, head)
    with pytest.raises(ValueError, match=r"Sequential: input x contains NaN or Inf"):
        f(params, x.at[0, 0].set(jnp.nan), y)
    with pytest.raises(ValueError, match=r"Sequential: input x contains NaN or Inf"):
        mbp.compare(model, head, params, x.at[1, 1].set(jnp.inf), y)
    cbrt = mbp.Elementwise(jnp.cbrt, lambda x: 1 / (3 * jnp.cbrt(x) ** 2), label="cbrt")  # f'(0) = inf
    m2 = mbp.Sequential(mbp.Dense(3, use_bias=False), cbrt)
    p2, _ = m2.init(jax.random.key(0), (5,))
    with pytest.raises(ValueError, match=r"gradient \(exploding gradients\? try clipping\) contains NaN or Inf"):
        mbp.value_and_grad(m2, head)(p2, x.at[0].set(0.0), y)


def test_no_reference_registered_is_a_clear_error():
    params = {"a": jnp.float64(1.0)}
    with pytest.raises(NotImplementedError, match="no reference forward for Cube"):
        mbp.check_layer(Cube(), params, jnp.ones((2, 2)))
