"""What every recurrent layer shares (recurrent_base.py), run for the RNN and the LSTM: BPTT vs jax.grad of the
reference over the options, per-step rows, given initial states and finite differences, and every bad input of
the shared interface. The GRU's own tests are in test_gru.py."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp.models import get
from manualbp.verify.tolerances import FINITE_DIFFERENCE
from manualbp.verify.verdict import judge

HEAD = mbp.SoftmaxCrossEntropy()


# (B, T, D, H), return_sequences, initial_state, dtype: T = 1 and T > 1, batch 1 and more, H != D, each
# option and dtype at least twice (a full product would compile 4x as many scans for no new code path)
CONFIGS = [
    ((1, 1, 3, 5), True, "zeros", jnp.float32),
    ((3, 1, 4, 2), False, "given", jnp.float64),
    ((1, 6, 3, 4), False, "zeros", jnp.float64),
    ((2, 5, 4, 3), True, "given", jnp.float32),
]


def _states(layer, B, dtype):
    keys = jax.random.split(jax.random.key(7), layer.n_states)
    return tuple(jax.random.normal(k, (B, layer.hidden), dtype) for k in keys)


def _input(layer, B, T, D, dtype):
    x = jax.random.normal(jax.random.key(1), (B, T, D), dtype)
    if layer.initial_state == "given":
        return (x, *_states(layer, B, dtype)), ((T, D), *[(layer.hidden,)] * layer.n_states)
    return x, (T, D)


def _make(kind, H, return_sequences, initial_state, activation=None):
    if kind == "rnn":
        return mbp.RNN(H, activation or mbp.Tanh(), return_sequences, initial_state)
    return mbp.LSTM(H, return_sequences, initial_state)


@partial(jax.jit, static_argnums=0)
def _jitted_trace(layer, params, x, dy):
    return layer.backward_trace(params, layer.forward(params, x)[1], dy)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"BTDH{c[0]}-seq{c[1]}-{c[2]}-{jnp.dtype(c[3]).name}")
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_layer_matches_reference(kind, config):
    (B, T, D, H), seq, init, dtype = config
    layer = _make(kind, H, seq, init)
    x, in_shape = _input(layer, B, T, D, dtype)
    params, out_shape = layer.init(jax.random.key(0), in_shape, dtype)
    report = mbp.check_layer(layer, params, x, jit=True)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == (B, *out_shape)
    if init == "given":  # dx is the pair/triple (dx, dh0[, dc0])
        assert len([r for r in report.rows if r.quantity.startswith("dL/dx")]) == 1 + layer.n_states


@pytest.mark.parametrize("name, dtype", [("rnn", jnp.float32), ("lstm", jnp.float64)])
def test_builtin_models_have_per_step_rows(name, dtype):
    b = get(name)
    params, _ = b.model.init(jax.random.key(0), b.input_shape, dtype)
    x, y, mask = b.make_batch(jax.random.key(1), 3, dtype)
    report = mbp.compare(b.model, b.head, params, x, y, mask)
    assert report.ok, str(report)
    T = b.input_shape[0] if name == "rnn" else b.input_shape[0][0]  # the LSTM's input is (x, lengths)
    label = "1 RNN" if name == "rnn" else "0 LSTM"
    kinds = ["h"] if name == "rnn" else ["h", "c"]
    for kind in kinds:
        for t in range(T):
            report.row(label, f"dL/d{kind}[t={t}]")
        norms = report.timestep_norms[f"{label} dL/d{kind}"]
        assert norms.shape == (T,) and norms[0] > 0


@pytest.mark.parametrize(
    "layer", [mbp.RNN(4, mbp.ReLU()), mbp.RNN(3, return_sequences=False), mbp.LSTM(3)], ids=repr
)
def test_against_finite_differences(layer):
    model = mbp.Sequential(layer, mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (5, 2), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 5, 2), jnp.float64)
    if layer.return_sequences:
        y = jax.random.randint(jax.random.key(2), (2, 5), 0, 3)
        mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    else:
        y, mask = jax.random.randint(jax.random.key(2), (2,), 0, 3), None
    report = mbp.gradcheck(model, HEAD, params, x, y, mask, k=4)
    assert report.ok, str(report)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_given_initial_state_against_finite_differences(kind):
    """dx and dh0 (and dc0) of a given initial state, by central differences of a scalar L = <y, w>."""
    layer = _make(kind, 3, False, "given")
    x, in_shape = _input(layer, 2, 4, 2, jnp.float64)
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float64)
    w = jax.random.normal(jax.random.key(3), (2, 3), jnp.float64)
    y, cache = layer.forward(params, x)
    _, dx = layer.backward(params, cache, w)
    loss = jax.jit(lambda inputs: jnp.sum(layer.forward(params, inputs)[0] * w))
    eps = 1e-6
    for i, (xi, dxi) in enumerate(zip(x, dx, strict=True)):
        v = jax.random.normal(jax.random.key(10 + i), xi.shape, jnp.float64)
        shift = [jnp.zeros_like(a) for a in x]
        shift[i] = eps * v
        plus = tuple(a + s for a, s in zip(x, shift, strict=True))
        minus = tuple(a - s for a, s in zip(x, shift, strict=True))
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        row = judge(layer.name, f"dx.{i}", jnp.sum(dxi * v), numeric, FINITE_DIFFERENCE)
        assert row.ok, row


def _rnn(**kw):
    layer = mbp.RNN(4, **kw)
    in_shape = ((3, 2), (4,)) if kw.get("initial_state") == "given" else (3, 2)
    return layer, layer.init(jax.random.key(0), in_shape, jnp.float32)[0]


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_non_3d_input(kind):
    layer = _make(kind, 4, True, "zeros")
    params, _ = layer.init(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected x of rank 3, got shape \(3, 2\)"):
        layer.forward(params, jnp.ones((3, 2)))


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_feature_size_differs_from_init(kind):
    layer = _make(kind, 4, True, "zeros")
    params, _ = layer.init(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected x of shape \(B, T, 2\) .*got x of shape \(1, 3, 5\)"):
        layer.forward(params, jnp.ones((1, 3, 5)))


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_zero_time_steps(kind):
    layer = _make(kind, 4, True, "zeros")
    with pytest.raises(ValueError, match=rf"{layer.name}.init: expected an input shape \(a tuple of sizes >= 1, batch "
                                         r"excluded\), got \(0, 2\): a size of 0 makes an empty array"):
        layer.init(jax.random.key(0), (0, 2))
    params, _ = layer.init(jax.random.key(0), (3, 2))
    with pytest.raises(ValueError, match=rf"{layer.name}: expected at least one time step, got x of shape \(2, 0, 2\)"):
        layer.forward(params, jnp.ones((2, 0, 2)))


def test_given_initial_state_errors():
    layer, params = _rnn(initial_state="given")
    x = jnp.ones((2, 3, 2), jnp.float32)
    with pytest.raises(TypeError, match=r"RNN: with initial_state='given' expected the input as a tuple \(x, h0\)"):
        layer.forward(params, x)
    with pytest.raises(ValueError, match=r"RNN: expected h0 of shape \(2, 4\) \(batch, hidden\), got \(2, 5\)"):
        layer.forward(params, (x, jnp.ones((2, 5), jnp.float32)))
    lstm = mbp.LSTM(4, initial_state="given")
    with pytest.raises(ValueError, match=r"LSTM: with initial_state='given' the input shape is \(\(T, D\), \(H,\), "):
        lstm.init(jax.random.key(0), (3, 2))
    zeros_layer, zparams = _rnn()
    with pytest.raises(TypeError, match="RNN: got a tuple input but initial_state='zeros'"):
        zeros_layer.forward(zparams, (x, jnp.ones((2, 4), jnp.float32)))


def test_wrong_upstream_gradient_shape():
    layer, params = _rnn(return_sequences=False)
    y, cache = layer.forward(params, jnp.ones((2, 3, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"RNN: expected dy of shape \(2, 4\) \(the shape of y\), got \(2, 3, 4\)"):
        layer.backward(params, cache, jnp.ones((2, 3, 4), jnp.float32))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mbp.RNN(0), "RNN: hidden must be a positive int, got 0"),
        (lambda: mbp.LSTM(2.5), "LSTM: hidden must be a positive int, got 2.5"),
        (lambda: mbp.RNN(3, activation=jnp.tanh), "RNN: activation must be an activation instance"),
        (lambda: mbp.RNN(3, initial_state="random"), "RNN: initial_state must be one of .*got 'random'"),
        (lambda: mbp.LSTM(3, return_sequences="last"), "LSTM: return_sequences must be a bool, got 'last'"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_mask_of_wrong_shape():
    b = get("rnn")
    params, _ = b.model.init(jax.random.key(0), b.input_shape, jnp.float32)
    x, y, _ = b.make_batch(jax.random.key(1), 2, jnp.float32)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: expected mask of shape \(2, 6\) .*got \(2, 5\)"):
        mbp.value_and_grad(b.model, b.head)(params, x, y, jnp.ones((2, 5), jnp.float32))
