"""GRU: BPTT vs jax.grad of the reference (configurations x dtype x jit, random configurations, per-step rows in the
built-in model), vs finite differences, the update gate's identity path, and every bad input."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import eager_in_float32_only, host
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp.cli import main
from manualbp.models import get
from manualbp.verify.tolerances import FINITE_DIFFERENCE
from manualbp.verify.verdict import judge

HEAD = mbp.SoftmaxCrossEntropy()

# (B, T, D, H), return_sequences, initial_state, dtype: T = 1 and T > 1, batch 1 and more, H != D, each option and
# dtype at least twice; every configuration runs with and without jit
CONFIGS = [
    ((1, 1, 3, 5), True, "zeros", jnp.float32),
    ((3, 1, 4, 2), False, "given", jnp.float64),
    ((1, 6, 3, 4), False, "zeros", jnp.float64),
    ((2, 5, 4, 3), True, "given", jnp.float32),
]


def _rand(shape, dtype, seed):
    # numpy draws: jax.random would compile a sampler for every new shape
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _case(B, T, D, H, seq, init, dtype, seed=0):
    """A GRU, params with every entry nonzero (biases too, so each gate's terms matter) and its input."""
    layer = mbp.GRU(H, seq, init)
    in_shape = ((T, D), (H,)) if init == "given" else (T, D)
    params, _ = layer.init(jax.random.key(seed), in_shape, dtype)
    params = {k: v + 0.5 * _rand(v.shape, dtype, seed + i) for i, (k, v) in enumerate(sorted(params.items()))}
    x = _rand((B, T, D), dtype, seed + 10)
    if init == "given":
        x = (x, _rand((B, H), dtype, seed + 11))
    return layer, params, x


CHECKS = eager_in_float32_only(CONFIGS, lambda c: c[3])


@pytest.mark.parametrize("config, jit", CHECKS,
                         ids=[f"BTDH{c[0]}-seq{c[1]}-{c[2]}-{jnp.dtype(c[3]).name}-{'jit' if j else 'eager'}" for c, j in CHECKS])
def test_layer_matches_reference(config, jit):
    (B, T, D, H), seq, init, dtype = config
    layer, params, x = _case(B, T, D, H, seq, init, dtype)
    report = mbp.check_layer(layer, params, x, jit=jit)
    assert report.ok, str(report)
    assert report.row("GRU", "forward y").shape == ((B, T, H) if seq else (B, H))
    names = {r.quantity for r in report.rows}
    assert {"dWx", "dWh", "db", "dbhn"} <= names
    if init == "given":  # dx is the pair (dx, dh0)
        assert len([r for r in report.rows if r.quantity.startswith("dL/dx")]) == 2


@settings(max_examples=2, deadline=None)
@given(
    btdh=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 5)),
    seq=st.booleans(),
    init=st.sampled_from(["zeros", "given"]),
    dtype=st.sampled_from([jnp.float32, jnp.float64]),
    seed=st.integers(0, 100),
)
def test_random_configurations(btdh, seq, init, dtype, seed):
    layer, params, x = _case(*btdh, seq, init, dtype, seed)
    report = mbp.check_layer(layer, params, x, key=jax.random.key(seed))  # eager: compiles less (jit: CONFIGS)
    assert report.ok, str(report)


def test_cli_check_gru_passes_with_per_step_rows_for_both_directions(capsys):
    """`manualbp check --model gru`: the built-in Bidirectional GRU, a row dL/dh[t] per step of each direction."""
    assert main(["check", "--model", "gru", "--dtype", "float64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["reports"]["gru"]
    T = get("gru").input_shape[0]
    assert report["ok"]
    rows = {(r["layer"], r["quantity"]) for r in report["rows"]}
    for label in ("2/forward GRU", "2/backward GRU"):
        assert {(label, f"dL/dh[t={t}]") for t in range(T)} <= rows
        norms = report["timestep_norms"][f"{label} dL/dh"]
        assert len(norms) == T and min(norms) > 0


@partial(jax.jit, static_argnums=0)
def _jitted_trace(layer, params, x, dy):
    return layer.backward_trace(params, layer.forward(params, x)[1], dy)


def test_trace_and_backward_agree_and_last_step_gradient_is_dy():
    layer, params, x = _case(2, 4, 2, 3, False, "zeros", jnp.float64)
    dy = _rand((2, 3), jnp.float64, 5)
    dparams, dx, steps = _jitted_trace(layer, params, x, dy)
    assert steps["h"].shape == (2, 4, 3)
    assert jnp.array_equal(steps["h"][:, -1], dy)  # only h_T reaches y
    dparams2, dx2 = layer.backward(params, layer.forward(params, x)[1], dy)  # eager, without the per-step rows
    for a, b in zip(jax.tree_util.tree_leaves((dparams, dx)), jax.tree_util.tree_leaves((dparams2, dx2)), strict=True):
        assert judge("GRU", "backward vs backward_trace", a, b, mbp.tolerance(jnp.float64)).ok


def test_closed_update_gate_is_an_identity_path():
    """z = 1 (b^z = 50: sigma rounds to 1): h_t = h_(t-1), so dL/dh0 = dy exactly and nothing reaches x or the weights."""
    layer, params, (x, h0) = _case(2, 5, 3, 4, False, "given", jnp.float64)
    params["b"] = params["b"].at[4:8].set(50.0)
    y, cache = layer.forward(params, (x, h0))
    dy = _rand((2, 4), jnp.float64, 7)
    grads, (dx, dh0) = layer.backward(params, cache, dy)
    assert judge("GRU", "y = h0", y, h0, mbp.tolerance(jnp.float64)).ok
    assert jnp.array_equal(dh0, dy)
    assert not jnp.any(dx) and not jnp.any(grads["Wx"]) and not jnp.any(grads["Wh"])


@pytest.mark.parametrize("seq", [True, False], ids=["sequences", "last"])
def test_against_finite_differences(seq):
    layer, params, _ = _case(2, 5, 2, 3, seq, "zeros", jnp.float64)
    model = mbp.Sequential(layer, mbp.Dense(3))
    dense, _ = mbp.Dense(3).init(jax.random.key(1), (3,), jnp.float64)
    x = _rand((2, 5, 2), jnp.float64, 3)
    if seq:
        y = host(np.random.default_rng(4).integers(0, 3, (2, 5)))
        mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    else:
        y, mask = jnp.array([0, 2]), None
    report = mbp.gradcheck(model, HEAD, (params, dense), x, y, mask, k=4)
    assert report.ok, str(report)


def test_given_initial_state_against_finite_differences():
    """dx and dh0 by central differences of a scalar L = <y, w>."""
    layer, params, inputs = _case(2, 4, 2, 3, False, "given", jnp.float64)
    w = _rand((2, 3), jnp.float64, 3)
    _, dx = layer.backward(params, layer.forward(params, inputs)[1], w)
    loss = jax.jit(lambda inputs: jnp.sum(layer.forward(params, inputs)[0] * w))
    eps = 1e-6
    for i, (xi, dxi) in enumerate(zip(inputs, dx, strict=True)):
        v = _rand(xi.shape, jnp.float64, 20 + i)
        shift = [jnp.zeros_like(a) for a in inputs]
        shift[i] = eps * v
        plus = tuple(a + s for a, s in zip(inputs, shift, strict=True))
        minus = tuple(a - s for a, s in zip(inputs, shift, strict=True))
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        row = judge("GRU", f"dx.{i}", jnp.sum(dxi * v), numeric, FINITE_DIFFERENCE)
        assert row.ok, row


def test_init_shapes():
    params, out_shape = mbp.GRU(4).init(jax.random.key(0), (6, 3))
    assert out_shape == (6, 4)
    assert {k: v.shape for k, v in params.items()} == {"Wx": (3, 12), "Wh": (4, 12), "b": (12,), "bhn": (4,)}
    Wh_n = params["Wh"][:, 8:]  # each gate's block orthogonal
    assert jnp.allclose(Wh_n.T @ Wh_n, jnp.eye(4), atol=1e-5)


# ---- bad input -------------------------------------------------------------------------------------------


def _gru(**kw):
    layer = mbp.GRU(4, **kw)
    in_shape = ((3, 2), (4,)) if kw.get("initial_state") == "given" else (3, 2)
    return layer, layer.init(jax.random.key(0), in_shape, jnp.float32)[0]


def test_bad_parameters():
    layer, params = _gru()
    x = jnp.ones((1, 3, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"GRU: expected params with keys \['Wh', 'Wx', 'b', 'bhn'\], got \['Wh', 'Wx', 'b'\]"):
        layer.forward({k: v for k, v in params.items() if k != "bhn"}, x)
    with pytest.raises(ValueError, match=r"GRU: expected parameter Wh of shape \(4, 12\) \(hidden, 3 hidden\), got \(4, 8\)"):
        layer.forward({**params, "Wh": params["Wh"][:, :8]}, x)
    with pytest.raises(ValueError, match=r"GRU: expected parameter Wx of shape \(2, 12\) .*got \(2, 9\)"):
        layer.forward({**params, "Wx": params["Wx"][:, :9]}, x)
    with pytest.raises(ValueError, match=r"GRU: expected parameter bhn of shape \(4,\) \(hidden,\) = \(4,\), got \(12,\)"):
        layer.forward({**params, "bhn": params["b"]}, x)
    with pytest.raises(TypeError, match="GRU: x has dtype float32 but b has float64"):
        layer.forward({**params, "b": params["b"].astype(jnp.float64)}, x)


def test_bad_inputs():
    layer, params = _gru()
    with pytest.raises(ValueError, match=r"GRU: expected x of rank 3, got shape \(3, 2\)"):
        layer.forward(params, jnp.ones((3, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"GRU: expected x of shape \(B, T, 2\) .*got x of shape \(1, 3, 5\)"):
        layer.forward(params, jnp.ones((1, 3, 5), jnp.float32))
    with pytest.raises(TypeError, match="GRU: x has dtype float16 but Wx has float32"):
        layer.forward(params, jnp.ones((1, 3, 2), jnp.float16))
    with pytest.raises(ValueError, match=r"GRU: expected at least one time step, got x of shape \(2, 0, 2\)"):
        layer.forward(params, jnp.ones((2, 0, 2), jnp.float32))
    given, gparams = _gru(initial_state="given")
    with pytest.raises(ValueError, match=r"GRU: expected h0 of shape \(2, 4\) \(batch, hidden\), got \(2, 5\)"):
        given.forward(gparams, (jnp.ones((2, 3, 2), jnp.float32), jnp.ones((2, 5), jnp.float32)))
    y, cache = layer.forward(params, jnp.ones((2, 3, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"GRU: expected dy of shape \(2, 3, 4\) \(the shape of y\), got \(2, 4\)"):
        layer.backward(params, cache, jnp.ones((2, 4), jnp.float32))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mbp.GRU(0), "GRU: hidden must be a positive int, got 0"),
        (lambda: mbp.GRU(3, initial_state="learned"), "GRU: initial_state must be one of .*got 'learned'"),
        (lambda: mbp.GRU(3, return_sequences=1), "GRU: return_sequences must be a bool, got 1"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()
