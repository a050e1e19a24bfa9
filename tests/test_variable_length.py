"""RNN, LSTM and GRU over variable-length sequences (``variable_length=True``, input ``(x, lengths[, states])``).

Padded steps (t >= lengths[b]) neither update the state nor feed the output: checked against the reference
twin (which masks inside its own scan), against finite differences, and against the plain layer run on
each sequence cut to its length.
"""

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.verify.tolerances import FINITE_DIFFERENCE
from manualbp.verify.verdict import judge

LENGTHS = (5, 2, 0)  # full, cut, empty (B = 3, T = 5)
T, D, H = 5, 2, 3


KINDS = {"rnn": mbp.RNN, "lstm": mbp.LSTM, "gru": mbp.GRU}


def _layer(kind, **kw):
    return KINDS[kind](H, variable_length=True, **kw)


def _inputs(layer, dtype, lengths=LENGTHS):
    """((x, lengths[, states]), init's input shape)."""
    B = len(lengths)
    x = jax.random.normal(jax.random.key(1), (B, T, D), dtype)
    n = layer.n_states if layer.initial_state == "given" else 0
    states = tuple(jax.random.normal(k, (B, H), dtype) for k in jax.random.split(jax.random.key(7), n)) if n else ()
    return (x, jnp.asarray(lengths), *states), ((T, D), (), *[(H,)] * n)


# kind x return_sequences x initial_state x dtype x jit: each option twice, each dtype and jit mode for both kinds
CONFIGS = [
    (True, "zeros", jnp.float32, True),
    (False, "zeros", jnp.float64, False),
    (True, "given", jnp.float64, True),
    (False, "given", jnp.float32, False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"seq{c[0]}-{c[1]}-{jnp.dtype(c[2]).name}-jit{c[3]}")
@pytest.mark.parametrize("kind", list(KINDS))
def test_layer_matches_reference(kind, config):
    """A random dy, nonzero at padded steps too: those must reach nothing (the output there is a constant 0)."""
    seq, init, dtype, jit = config
    layer = _layer(kind, return_sequences=seq, initial_state=init)
    x, in_shape = _inputs(layer, dtype)
    params, out_shape = layer.init(jax.random.key(0), in_shape, dtype)
    report = mbp.check_layer(layer, params, x, jit=jit)
    assert report.ok, str(report)
    assert report.row(layer.name, "forward y").shape == (len(LENGTHS), *out_shape)
    dx_rows = {r.quantity for r in report.rows if r.quantity.startswith("dL/dx")}
    assert dx_rows == {"dL/dx.0", *(f"dL/dx.{2 + i}" for i in range(layer.n_states if init == "given" else 0))}


@pytest.mark.parametrize("kind, dtype", [("rnn", jnp.float32), ("lstm", jnp.float64), ("gru", jnp.float64)])
def test_in_a_model_with_per_step_rows(kind, dtype):
    """Unmasked loss at every step: padded steps' outputs still reach the loss (through Dense's bias), not the RNN."""
    layer = _layer(kind)
    model = mbp.Sequential(layer, mbp.Dense(4))
    x, in_shape = _inputs(layer, dtype)
    params, _ = model.init(jax.random.key(0), in_shape, dtype)
    y = jax.random.randint(jax.random.key(2), (len(LENGTHS), T), 0, 4)
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.ok, str(report)
    for kind_ in ["h", "c"][: layer.n_states]:
        for t in range(T):
            report.row(f"0 {layer.name}", f"dL/d{kind_}[t={t}]")


@pytest.mark.parametrize("kind, seq", [("rnn", True), ("lstm", False), ("gru", False)])
def test_padded_steps_change_nothing(kind, seq):
    """Each sequence alone, cut to its length, through the plain layer: the same outputs and gradients.

    Padded outputs are 0; the last output is the state after the last real step; dx is 0 at padded steps;
    the gradient of a sequence of length 0 reaches only its initial state.
    """
    tol = mbp.tolerance(jnp.float64)
    layer = _layer(kind, return_sequences=seq, initial_state="given")
    plain = KINDS[kind](H, return_sequences=seq, initial_state="given")
    x, in_shape = _inputs(layer, jnp.float64)
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float64)
    y, cache = layer.forward(params, x)
    dy = jax.random.normal(jax.random.key(3), y.shape, jnp.float64)
    _, dx = layer.backward(params, cache, dy)
    assert dx[1] is None  # no gradient for the lengths
    for b, n in enumerate(LENGTHS):
        states = tuple(s[b : b + 1] for s in x[2:])
        if n == 0:  # nothing ran: the output is the initial state (or zeros), and dy goes straight to h0
            assert np.all(np.asarray(y[b]) == (0 if seq else np.asarray(x[2][b])))
            assert np.all(np.asarray(dx[0][b]) == 0)
            if not seq:
                assert judge("h0", "dh0", dx[2][b], dy[b], tol).ok
            continue
        y_b, cache_b = plain.forward(params, (x[0][b : b + 1, :n], *states))
        dy_b = dy[b : b + 1, :n] if seq else dy[b : b + 1]
        _, dx_b = plain.backward(params, cache_b, dy_b)
        assert judge("y", "forward", y[b, :n] if seq else y[b], y_b[0], tol).ok
        if seq:
            assert np.all(np.asarray(y[b, n:]) == 0)
        assert judge("x", "dx", dx[0][b, :n], dx_b[0][0], tol).ok
        assert np.all(np.asarray(dx[0][b, n:]) == 0)
        for i in range(layer.n_states):
            assert judge("state", f"d{i}", dx[2 + i][b], dx_b[1 + i][0], tol).ok


@pytest.mark.parametrize("kind", list(KINDS))
def test_full_lengths_equal_the_plain_layer(kind):
    """lengths = T everywhere: the interface without lengths, value for value."""
    layer = _layer(kind)
    plain = KINDS[kind](H)
    x, in_shape = _inputs(layer, jnp.float32, lengths=(T, T))
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float32)
    y, cache = layer.forward(params, x)
    y_p, cache_p = plain.forward(params, x[0])
    dparams, (dx, _) = layer.backward(params, cache, y)
    dparams_p, dx_p = plain.backward(params, cache_p, y_p)
    tol = mbp.tolerance(jnp.float32)
    for name, a, b in [("y", y, y_p), ("dx", dx, dx_p), *[(k, dparams[k], dparams_p[k]) for k in dparams]]:
        assert judge(kind, name, a, b, tol).ok, name


@partial(jax.jit, static_argnums=0)
def _loss(layer, params, x, w):
    return jnp.sum(layer.forward(params, x)[0] * w)


@pytest.mark.parametrize(
    "layer",
    [mbp.RNN(H, mbp.ReLU(), variable_length=True, initial_state="given"),
     mbp.LSTM(H, return_sequences=False, variable_length=True, initial_state="given"),
     mbp.GRU(H, return_sequences=False, variable_length=True, initial_state="given")],
    ids=lambda layer: layer.name,
)
def test_against_finite_differences(layer):
    """Every gradient (params, x, initial states) of L = <y, w> along random directions, by central differences."""
    x, in_shape = _inputs(layer, jnp.float64)
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float64)
    y, cache = layer.forward(params, x)
    w = jax.random.normal(jax.random.key(3), y.shape, jnp.float64)
    dparams, dx = layer.backward(params, cache, w)
    eps = 1e-6
    floats = [0, *range(2, len(x))]  # x and the states; lengths (1) are integers
    for i, kk in enumerate(jax.random.split(jax.random.key(11), 3)):
        vp = jax.tree_util.tree_map(lambda a, k=kk: jax.random.normal(k, a.shape, a.dtype), params)
        vx = {j: jax.random.normal(jax.random.fold_in(kk, j), x[j].shape, x[j].dtype) for j in floats}

        def moved(s, vp=vp, vx=vx):
            p = jax.tree_util.tree_map(lambda a, v: a + s * v, params, vp)
            return p, tuple(a + s * vx[j] if j in vx else a for j, a in enumerate(x))

        numeric = (_loss(layer, *moved(eps), w) - _loss(layer, *moved(-eps), w)) / (2 * eps)
        analytic = sum(jnp.sum(dparams[k] * vp[k]) for k in params) + sum(jnp.sum(dx[j] * vx[j]) for j in floats)
        row = judge(layer.name, f"dL . v{i}", analytic, numeric, FINITE_DIFFERENCE)
        assert row.ok, row


def test_padded_steps_are_no_kinks():
    """A ReLU RNN's discrete choices are only those of real steps (finite differences ignore the padding)."""
    layer = mbp.RNN(H, mbp.ReLU(), variable_length=True)
    x, in_shape = _inputs(layer, jnp.float64)
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float64)
    pattern = layer.kink_pattern(layer.forward(params, x)[1])  # (T, B, H)
    real = np.arange(T)[:, None] < np.asarray(LENGTHS)[None, :]
    assert not np.any(np.asarray(pattern)[~real]) and np.any(np.asarray(pattern)[real])


def test_jit_with_traced_lengths():
    layer = _layer("lstm", return_sequences=False)
    x, in_shape = _inputs(layer, jnp.float32)
    params, _ = layer.init(jax.random.key(0), in_shape, jnp.float32)
    eager = layer.forward(params, x)[0]
    jitted = jax.jit(lambda p, x: layer.forward(p, x)[0])(params, x)
    assert judge("LSTM", "y", jitted, eager, mbp.tolerance(jnp.float32)).ok


# ---- bad input -------------------------------------------------------------------------------------------


def _rnn():
    layer = mbp.RNN(H, variable_length=True)
    return layer, layer.init(jax.random.key(0), ((T, D), ()), jnp.float32)[0], jnp.ones((2, T, D), jnp.float32)


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        (jnp.array([1.0, 2.0], jnp.float32), TypeError,
         r"RNN: expected lengths of an integer dtype \(steps per sequence\), got float32\[2\]"),
        (jnp.array([1, 2, 3]), ValueError, r"RNN: expected lengths of shape \(2,\) \(one per sequence\), got \(3,\)"),
        (jnp.array([1, 6]), ValueError, r"RNN: lengths must lie in \[0, 5\] \(T = 5 steps\), got values in \[1, 6\]"),
        (jnp.array([-1, 2]), ValueError, r"RNN: lengths must lie in \[0, 5\] .*got values in \[-1, 2\]"),
        ([1, 2], TypeError, r"RNN: expected lengths to be an integer array of shape \(2,\), got list"),
    ],
    ids=["float", "shape", "above-T", "negative", "list"],
)
def test_bad_lengths(lengths, error, match):
    layer, params, x = _rnn()
    with pytest.raises(error, match=match):
        layer.forward(params, (x, lengths))


def test_missing_lengths():
    layer, params, x = _rnn()
    with pytest.raises(TypeError, match=r"RNN: with variable_length=True expected the input as a tuple \(x, lengths\)"):
        layer.forward(params, x)
    lstm = mbp.LSTM(H, variable_length=True, initial_state="given")
    with pytest.raises(ValueError, match=r"LSTM: with initial_state='given' and variable_length=True the input shape is "
                                         r"\(\(T, D\), \(\), \(H,\), \(H,\)\), got \(5, 2\)"):
        lstm.init(jax.random.key(0), (T, D))
    with pytest.raises(TypeError, match=r"RNN: got a tuple input but initial_state='zeros' and variable_length=False"):
        mbp.RNN(H).forward(params, (x, jnp.array([1, 2])))


def test_variable_length_must_be_a_bool():
    with pytest.raises(ValueError, match="LSTM: variable_length must be a bool, got 'yes'"):
        mbp.LSTM(3, variable_length="yes")


# every layer with a length input: the three recurrent layers and Bidirectional (lengths reach both directions)
LENGTH_LAYERS = {"rnn": lambda: mbp.RNN(H, variable_length=True, return_sequences=False),
                 "lstm": lambda: mbp.LSTM(H, variable_length=True, return_sequences=False),
                 "gru": lambda: mbp.GRU(H, variable_length=True, return_sequences=False),
                 "bidirectional": lambda: mbp.Bidirectional(mbp.GRU(H, variable_length=True))}


@functools.cache
def _length_model(kind):
    model = mbp.Sequential(LENGTH_LAYERS[kind](), *([mbp.Flatten()] if kind == "bidirectional" else []), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), ((T, D), ()), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (2, T, D), jnp.float32)
    return model, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1])


@pytest.mark.parametrize("kind", sorted(LENGTH_LAYERS))
@pytest.mark.parametrize("lengths, span", [([9, 2], r"\[2, 9\]"), ([-3, 2], r"\[-3, 2\]"), ([5, 6], r"\[5, 6\]")],
                         ids=["above-T", "negative", "T+1"])
def test_lengths_outside_0_T_raise_before_any_jit_or_verdict(kind, lengths, span):
    """The default (internally jitted) value_and_grad, compare, gradcheck and check_layer: the eager message."""
    model, head, params, x, y = _length_model(kind)
    name = "GRU" if kind == "bidirectional" else kind.upper()
    match = rf"{name}: lengths must lie in \[0, 5\] \(T = 5 steps\), got values in {span}"
    inputs = (x, jnp.array(lengths))
    for call in (lambda: mbp.value_and_grad(model, head)(params, inputs, y),
                 lambda: mbp.compare(model, head, params, inputs, y),
                 lambda: mbp.gradcheck(model, head, params, inputs, y),
                 lambda: mbp.check_layer(model.layers[0], params[0], inputs)):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("kind", sorted(LENGTH_LAYERS))
def test_under_a_users_jit_an_invalid_length_is_nan_and_a_captured_constant_is_checked(kind):
    """Traced lengths cannot raise: an invalid one gives a NaN loss (manual and reference alike), never a plausible
    number; valid lengths held in a jax array the jitted function captures are concrete there, and work (no
    ConcretizationTypeError)."""
    from manualbp import reference as ref

    model, head, params, x, y = _length_model(kind)
    good = jnp.array([5, 2])
    f = mbp.value_and_grad(model, head)
    twin = kind in ("rnn", "bidirectional")  # the reference's two paths: the recurrent scan, and both directions

    @jax.jit
    def losses(params, x, lengths):
        m, m_grads = f(params, (x, lengths), y)
        r = ref.value_and_grad(model, head)(params, (x, lengths), y)[0] if twin else jnp.nan
        return m, r, m_grads, f(params, (x, good), y)[0]  # ``good`` is captured: a constant of the trace

    for bad in ([9, 2], [-1, 2]):
        m, r, m_grads, captured = losses(params, x, jnp.array(bad))
        assert np.isnan(m) and np.isnan(r) and all(np.isnan(g).any() for g in jax.tree_util.tree_leaves(m_grads))
        assert captured == f(params, (x, good), y)[0]
    bad = jnp.array([7, 2])  # made outside the trace: concrete there, checked where the layer meets it
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        jax.jit(lambda p, x: model.forward(p, (x, bad))[0])(params, x)
    # value_and_grad checks it too, before its own jit: the captured constant is concrete beside the traced x
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\] \(T = 5 steps\), got values in \[2, 7\]"):
        jax.jit(lambda p, x: f(p, (x, bad), y)[0])(params, x)
