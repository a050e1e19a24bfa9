"""The layer-by-layer report and its row order, check_layer with a user's own layer and bad input, value_and_grad."""

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify.verdict import judge


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
        assert judge("m", "loss", loss, loss_r, tol).ok
        for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_r)):
            assert judge("m", "g", g, r, tol).ok


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


# --- issue 14, item 7: the first failing row is where the error enters, for containers and through time ---


@dataclass(frozen=True)
class ResidualWithoutIdentity(mbp.Residual):
    """dx = (dF/dx)^T dy only: the identity path's dy is dropped."""

    def backward(self, params, cache, dy):
        return self.block.backward(params, cache, dy)

    def replace_children(self, layers):
        (block,) = layers
        return ResidualWithoutIdentity(block)


@dataclass(frozen=True, init=False)
class ParallelFirstBranchOnly(mbp.Parallel):
    """dx = dx_1: the other branches' gradients are not summed in."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        _, dx = self.layers[0].backward(params[0], cache[0], dy[0])
        return grads, dx


ref.forward.register(ResidualWithoutIdentity)(ref.forward.dispatch(mbp.Residual))
ref.forward.register(ParallelFirstBranchOnly)(ref.forward.dispatch(mbp.Parallel))


@pytest.mark.parametrize(("container", "label"), [
    (ResidualWithoutIdentity(mbp.Sequential(mbp.Dense(4), mbp.Tanh())), "1 ResidualWithoutIdentity"),
    (mbp.Sequential(ParallelFirstBranchOnly(mbp.Dense(4), mbp.Sequential(mbp.Dense(4), mbp.Tanh())), mbp.Add()),
     "1/0 ParallelFirstBranchOnly"),
])
def test_a_wrong_container_rule_first_fails_at_the_container(container, label):
    model = mbp.Sequential(mbp.Dense(4), container, mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (4, 5), jnp.float64)
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1, 2, 0]))
    assert (report.first_failure.layer, report.first_failure.quantity) == (label, "dL/dx"), str(report)
    names = [(r.layer, r.quantity) for r in report.rows]
    # a container's dL/dy comes before its children's rows, its dL/dx after them, its forward y after theirs
    children = [i for i, (layer, _) in enumerate(names) if layer.startswith(label.split(" ")[0] + "/")]
    own = {q: i for i, (layer, q) in enumerate(names) if layer == label}
    assert max(i for q, i in own.items() if q.startswith("dL/dy")) < min(i for i in children if names[i][1] != "forward y"
                                                                      and not names[i][1].startswith("forward y."))
    assert own["dL/dx"] > max(children)
    assert min(i for q, i in own.items() if q.startswith("forward y")) > max(
        i for i in children if names[i][1].startswith("forward y"))


@dataclass(frozen=True)
class TanhWrongDerivative(mbp.Tanh):
    """tanh'(z) = 1 - y: wrong, used at every step of an RNN."""

    def backward(self, params, cache, dy):
        return {}, dy * (1 - cache)


ref.forward.register(TanhWrongDerivative)(ref.forward.dispatch(mbp.Tanh))


def test_recurrent_rows_follow_backprop_through_time():
    T = 4
    rnn = mbp.Sequential(mbp.RNN(3, activation=TanhWrongDerivative()), mbp.Dense(2))
    params, _ = rnn.init(jax.random.key(0), (T, 2), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (3, T, 2), jnp.float64)
    report = mbp.compare(rnn, mbp.SoftmaxCrossEntropy(), params, x, jnp.zeros((3, T), int))
    # dL/dh at the last step is the output's gradient alone; the wrong derivative first enters dL/dh[t=T-2]
    steps = [r.quantity for r in report.rows if r.layer == "0 RNN" and "[t=" in r.quantity]
    assert steps == [f"dL/dh[t={t}]" for t in reversed(range(T))]
    assert report.row("0 RNN", f"dL/dh[t={T - 1}]").ok
    assert (report.first_failure.layer, report.first_failure.quantity) == ("0 RNN", f"dL/dh[t={T - 2}]"), str(report)
    lstm = mbp.Sequential(mbp.LSTM(3), mbp.Dense(2))
    p2, _ = lstm.init(jax.random.key(0), (T, 2), jnp.float64)
    lstm_report = mbp.compare(lstm, mbp.SoftmaxCrossEntropy(), p2, x, jnp.zeros((3, T), int))
    steps = [r.quantity for r in lstm_report.rows if r.layer == "0 LSTM" and "[t=" in r.quantity]
    assert steps == [f"dL/d{k}[t={t}]" for t in reversed(range(T)) for k in ("h", "c")]
    assert set(lstm_report.timestep_norms) == {"0 LSTM dL/dh", "0 LSTM dL/dc"}


def test_the_head_gradient_is_the_first_backward_row():
    model, head, params, x, y = _mlp(jnp.float64)
    report = mbp.compare(model, head, params, x, y)
    names = [(r.layer, r.quantity) for r in report.rows]
    i = names.index(("model Sequential", "loss"))
    assert names[i + 1] == ("head SoftmaxCrossEntropy", "dL/dlogits")


# --- issue 14, item 6: check_layer's bad input ---


def test_check_layer_accepts_python_numbers_and_numpy_arrays():
    x = np.random.default_rng(0).standard_normal((3, 2))  # numpy float64 (jax float64 under the tests' x64)
    fn = lambda p, x: p["a"] * jnp.power(x, 3)  # noqa: E731
    report = mbp.check_layer(Cube(), {"a": 1.5}, x, reference=fn)
    assert report.ok and report.dtype == "float64", str(report)
    assert mbp.check_layer(Cube(), {"a": np.float64(1.5)}, x, reference=fn, jit=True).ok


def test_check_layer_raises_on_non_finite_input_like_compare():
    fn = lambda p, x: p["a"] * jnp.power(x, 3)  # noqa: E731
    x = jnp.ones((3, 2)).at[1, 1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"Cube: input x contains NaN or Inf"):
        mbp.check_layer(Cube(), {"a": 1.5}, x, reference=fn)
    with pytest.raises(ValueError, match=r"Cube: params contains NaN or Inf"):
        mbp.check_layer(Cube(), {"a": jnp.inf}, jnp.ones((3, 2)), reference=fn)
    with pytest.raises(ValueError, match=r"Cube: dy contains NaN or Inf"):
        mbp.check_layer(Cube(), {"a": 1.5}, jnp.ones((3, 2)), jnp.full((3, 2), jnp.nan), reference=fn)


def test_check_layer_names_a_wrong_dy_or_reference_shape():
    fn = lambda p, x: p["a"] * jnp.power(x, 3)  # noqa: E731
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"check_layer: Cube: dy is float\d+\[3\], but the layer's forward returns y "
                                         r"float\d+\[3,2\]"):
        mbp.check_layer(Cube(), {"a": 1.5}, x, jnp.ones((3,)), reference=fn)
    with pytest.raises(ValueError, match=r"check_layer: Cube: the reference returns float\d+\[3\], but the layer's forward "
                                         r"returns y float\d+\[3,2\]"):
        mbp.check_layer(Cube(), {"a": 1.5}, x, reference=lambda p, x: p["a"] * jnp.sum(x, axis=1))
