"""No PASS by omission: a gradient the backward leaves out, or a program compiled for code that changed since.

Rows come from the union of what the reference differentiates and what the manual backward returned: a
quantity missing on the manual side is a failing row of its own ("missing"), never a skipped one; the entry
points that hand gradients to a user raise, naming the layer and the parameter. A compiled program is keyed by
the code it runs, so a backward patched after a first run is the one judged next.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from arrays import host

import manualbp as mbp
from manualbp import reference as ref
from manualbp.training.data import Dataset
from manualbp.verify.tolerances import Rule


@dataclass(frozen=True)
class Affine:
    """A user's layer y = a x + b whose backward can forget dx or db."""

    forget: str = ""

    def init(self, key, input_shape, dtype=jnp.float32):
        del key
        return {"a": host(np.float64(1.5), dtype), "b": host(np.float64(-0.3), dtype)}, tuple(input_shape)

    def forward(self, params, x):
        return params["a"] * x + params["b"], x

    def backward(self, params, x, dy):
        grads = {"a": jnp.sum(dy * x)}
        if self.forget != "db":
            grads["b"] = jnp.sum(dy)
        return grads, None if self.forget == "dx" else dy * params["a"]


mbp.register_reference(Affine, lambda layer, params, x: params["a"] * x + params["b"])


def _point(dtype=jnp.float64):
    params = {"a": host(np.float64(1.5), dtype), "b": host(np.float64(-0.3), dtype)}
    return params, host(np.random.default_rng(0).standard_normal((4, 3)), dtype)


def test_check_layer_fails_a_backward_that_returns_no_dx():
    params, x = _point()
    report = mbp.check_layer(Affine(forget="dx"), params, x)
    assert report.status == "FAIL", str(report)
    row = report.first_failure
    assert (row.quantity, row.rule) == ("dL/dx", Rule.STRUCTURE) and row.note.startswith("missing"), str(report)
    assert "returned no dL/dx" in report.summary()
    assert report.row("Affine", "da").ok and report.row("Affine", "db").ok


def test_check_layer_fails_a_backward_that_forgets_a_parameter():
    params, x = _point()
    report = mbp.check_layer(Affine(forget="db"), params, x)
    assert report.status == "FAIL" and report.first_failure.quantity == "db", str(report)
    assert "no gradient for parameter b" in report.first_failure.note
    assert mbp.check_layer(Affine(), params, x).ok


def _model(forget=""):
    return mbp.Sequential(mbp.Dense(3), Affine(forget), mbp.Dense(2))


def _model_point(model, dtype=jnp.float64):
    params = model.init(jax.random.key(0), (3,), dtype)[0]
    rng = np.random.default_rng(1)
    return params, host(rng.standard_normal((5, 3)), dtype), host(np.array([0, 1, 1, 0, 1]))


def test_compare_fails_an_omission_inside_a_model_at_the_layer():
    model = _model("db")
    params, x, y = _model_point(model)
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.status == "FAIL", str(report)
    assert (report.first_failure.layer, report.first_failure.quantity) == ("1 Affine", "db"), str(report)
    assert report.row("1 Affine", "da").ok and report.row("1 Affine", "dL/dx").ok
    assert mbp.compare(_model(), mbp.SoftmaxCrossEntropy(), params, x, y).ok


def test_compare_fails_a_dx_left_out_inside_a_model_and_still_runs_the_layers_before():
    model = _model("dx")
    params, x, y = _model_point(model)
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert (report.first_failure.layer, report.first_failure.quantity) == ("1 Affine", "dL/dx"), str(report)
    assert report.first_failure.note.startswith("missing")
    assert not report.row("0 Dense", "dW").ok  # the gradient never reached the first layer: its rows fail too


def test_gradcheck_fails_a_forgotten_parameter_at_the_layer():
    model = _model("db")
    params, x, y = _model_point(model)
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    row = report.first_failure
    assert report.status == "FAIL" and (row.layer, row.quantity) == ("1 Affine", "db"), str(report)
    assert row.rule is Rule.STRUCTURE and row.note.startswith("missing"), str(report)
    # a dx left out inside a model: no gradient of the whole model to compare, so one failing row that says why
    report = mbp.gradcheck(_model("dx"), mbp.SoftmaxCrossEntropy(), params, x, y)
    row = report.first_failure
    assert report.status == "FAIL" and (row.layer, row.quantity, row.rule) == ("1 Affine", "dL/dx", Rule.STRUCTURE)
    assert "Sequential: the backward of 1 (Affine) returned dx=None" in row.note, str(report)
    assert row.diagnosis.kind == "structure"


@pytest.mark.parametrize("forget", ["db", "dx"])
def test_the_entry_points_that_hand_out_gradients_raise_naming_the_layer(forget):
    model = _model(forget)
    params, x, y = _model_point(model, jnp.float32)
    head = mbp.SoftmaxCrossEntropy()
    message = (r"1 Affine: missing gradient: its backward returned no gradient for parameter b" if forget == "db" else
               r"Sequential: the backward of 1 \(Affine\) returned dx=None")
    for jit in (True, False):
        with pytest.raises(ValueError, match=message):
            mbp.value_and_grad(model, head, jit=jit)(params, x, y)
    with pytest.raises(ValueError, match=message):
        jax.grad(lambda p: jnp.sum(mbp.as_function(model)(p, x)))(params)
    data = Dataset("tiny", np.asarray(x), np.asarray(y), np.asarray(x), np.asarray(y), "classification", 2)
    with pytest.raises(ValueError, match=message):
        mbp.train(model, head, params, data, steps=1, batch_size=5, key=jax.random.key(0))


def test_a_backward_patched_after_a_first_run_is_the_one_judged():
    """A notebook user fixes (or breaks) a backward in place: the next compare compiles the new code."""

    class PatchedTanh(mbp.Tanh):
        pass

    ref.forward.register(PatchedTanh)(ref.forward.dispatch(mbp.Tanh))
    model = mbp.Sequential(mbp.Dense(4), PatchedTanh(), mbp.Dense(2))
    params = model.init(jax.random.key(0), (3,), jnp.float64)[0]
    x, y = host(np.random.default_rng(0).standard_normal((5, 3))), host(np.array([0, 1, 1, 0, 1]))
    head = mbp.SoftmaxCrossEntropy()
    f = mbp.value_and_grad(model, head)
    assert mbp.compare(model, head, params, x, y).ok
    right = f(params, x, y)[1]
    try:
        PatchedTanh.backward = lambda self, params, cache, dy: ({}, dy * (1 - cache))  # wrong: tanh' = 1 - y^2
        report = mbp.compare(model, head, params, x, y)
        assert (report.first_failure.layer, report.first_failure.quantity) == ("1 PatchedTanh", "dL/dx"), str(report)
        assert not np.allclose(f(params, x, y)[1][0]["W"], right[0]["W"])  # value_and_grad recompiled too
    finally:
        del PatchedTanh.backward
    assert mbp.compare(model, head, params, x, y).ok
    np.testing.assert_array_equal(f(params, x, y)[1][0]["W"], right[0]["W"])


def test_a_re_registered_reference_is_the_one_compared():
    class Doubled(mbp.Tanh):
        pass

    ref.forward.register(Doubled)(ref.forward.dispatch(mbp.Tanh))
    model = mbp.Sequential(mbp.Dense(4), Doubled(), mbp.Dense(2))
    params = model.init(jax.random.key(0), (3,), jnp.float64)[0]
    x, y = host(np.random.default_rng(0).standard_normal((5, 3))), host(np.array([0, 1, 1, 0, 1]))
    assert mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y).ok
    ref.forward.register(Doubled)(lambda layer, params, x, taps: 2 * jnp.tanh(x))
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert (report.first_failure.layer, report.first_failure.quantity) == ("1 Doubled", "forward y"), str(report)


def test_a_twin_run_whose_loss_is_exactly_zero_passes():
    """An exact fit (zero weights, zero targets): both losses exactly 0, every gradient 0, at every step."""
    model = mbp.Sequential(mbp.Dense(2))
    params = jax.tree_util.tree_map(jnp.zeros_like, model.init(jax.random.key(0), (3,), jnp.float32)[0])
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = np.zeros((8, 2), np.float32)
    data = Dataset("fit", x, y, x, y, "regression", 2)
    result = mbp.train_twin(model, mbp.MeanSquaredError(), params, data, optimizer=optax.sgd(0.1), steps=3,
                            batch_size=4, key=jax.random.key(0))
    assert np.all(result.divergence.losses == 0)
    assert result.divergence.ok, result.divergence.summary()


def test_check_vjp_states_the_rule_it_applied():
    """float64 leaves no higher precision to measure the reference's own error in: the rule applied is the fixed one."""

    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, dy: (3 * x**2 * dy,))
    report = mbp.check_vjp(cube, lambda x: x**3, host(np.linspace(-1, 1, 5)))
    assert report.ok and report.verdict is Rule.FIXED
    assert "64x" not in str(report).splitlines()[0] and "not measured" in report.title
    assert all(r.rule in (Rule.FIXED, Rule.EXACT) for r in report.rows)
