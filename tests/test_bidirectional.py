"""Bidirectional: manual vs jax.grad of the reference for RNN, LSTM and GRU inside (dtype x jit x all steps / last
step), rows for both directions in compare, what the backward direction reads, a wrong time reversal caught,
finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp


def _rand(shape, dtype, seed):
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


# inner layer(s), dtype, jit: each recurrent layer, all steps and last step, both dtypes and both jit modes
CONFIGS = [
    ((mbp.RNN(3),), jnp.float32, False),
    ((mbp.LSTM(4, return_sequences=False),), jnp.float64, True),
    ((mbp.GRU(3),), jnp.float64, True),
    ((mbp.GRU(2, return_sequences=False), mbp.RNN(3, return_sequences=False)), jnp.float32, False),
]


@pytest.mark.parametrize("layers,dtype,jit", CONFIGS, ids=str)
def test_layer_matches_reference(layers, dtype, jit):
    layer = mbp.Bidirectional(*layers)
    params, out_shape = layer.init(jax.random.key(0), (5, 2), dtype)
    x = _rand((2, 5, 2), dtype, 1)
    report = mbp.check_layer(layer, params, x, jit=jit)
    assert report.ok, str(report)
    assert report.row("Bidirectional", "forward y").shape == (2, *out_shape)
    H = sum(inner.hidden for inner in (layers * 2)[:2])
    assert out_shape == ((5, H) if layers[0].return_sequences else (H,))


def _model():
    return mbp.Sequential(mbp.Bidirectional(mbp.GRU(3), mbp.LSTM(2)), mbp.Dense(4))


def test_compare_has_rows_for_both_directions():
    model, T = _model(), 5
    params, _ = model.init(jax.random.key(0), (T, 2), jnp.float64)
    x, y = _rand((3, T, 2), jnp.float64, 1), host(np.random.default_rng(2).integers(0, 4, (3, T)))
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.ok, str(report)
    for label, kinds in (("0/forward GRU", ["h"]), ("0/backward LSTM", ["h", "c"])):
        for q in ("forward y", "dL/dy", "dL/dx", "dWx"):
            report.row(label, q)
        for kind in kinds:
            for t in range(T):
                report.row(label, f"dL/d{kind}[t={t}]")


def test_backward_direction_reads_the_reversed_sequence():
    """y = [GRU_f(x), GRU_b(x reversed) with its states put back in x's time order]; last-step: GRU_b's final state."""
    x = _rand((2, 4, 3), jnp.float64, 1)
    for seq in (True, False):
        gru = mbp.GRU(2, return_sequences=seq)
        layer = mbp.Bidirectional(gru)
        params, _ = layer.init(jax.random.key(0), (4, 3), jnp.float64)
        y, _ = layer.forward(params, x)
        yf, _ = gru.forward(params["forward"], x)
        yb, _ = gru.forward(params["backward"], x[:, ::-1])
        assert jnp.array_equal(y, jnp.concatenate([yf, yb[:, ::-1] if seq else yb], axis=-1))


class _NoReversalOfDx(mbp.Bidirectional):
    """A realistic bug: the backward direction's dx is added without reversing its time axis back."""

    def backward(self, params, cache, dy):
        cf, cb, split = cache
        gf, dxf = self.layer.backward(params["forward"], cf, dy[..., :split])
        gb, dxb = self.backward_layer.backward(params["backward"], cb, dy[..., split:][:, ::-1])
        return {"forward": gf, "backward": gb}, dxf + dxb


def test_a_missing_time_reversal_fails_at_the_input_gradient():
    bad = _NoReversalOfDx(mbp.RNN(3))
    params, _ = bad.init(jax.random.key(0), (4, 2), jnp.float64)
    report = mbp.check_layer(bad, params, _rand((2, 4, 2), jnp.float64, 1))  # the reference of Bidirectional
    assert not report.ok
    assert [r.quantity for r in report.rows if not r.ok] == ["dL/dx"]  # forward and every parameter gradient agree


def test_against_finite_differences():
    model = mbp.Sequential(mbp.Bidirectional(mbp.GRU(2)), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4, 2), jnp.float64)
    x = _rand((2, 4, 2), jnp.float64, 1)
    y, mask = jnp.array([[0, 1, 2, 0], [2, 1, 0, 0]]), jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y, mask, k=3)
    assert report.ok, str(report)


# ---- bad input -------------------------------------------------------------------------------------------


def test_bad_construction():
    with pytest.raises(ValueError, match=r"Bidirectional: the forward layer GRU has initial_state='given'; .*zeros"):
        mbp.Bidirectional(mbp.GRU(3, initial_state="given"))
    with pytest.raises(ValueError, match=r"Bidirectional: both layers must agree on return_sequences, got True and False"):
        mbp.Bidirectional(mbp.GRU(3), mbp.RNN(3, return_sequences=False))
    with pytest.raises(TypeError, match=r"Bidirectional: forward 3 is not a layer"):
        mbp.Bidirectional(3)


def test_bad_input():
    layer = mbp.Bidirectional(mbp.GRU(3))
    params, _ = layer.init(jax.random.key(0), (4, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"Bidirectional: expected x of rank 3, got shape \(4, 2\)"):
        layer.forward(params, jnp.ones((4, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"Bidirectional: expected params as a dict with keys \['backward', 'forward'\], "
                                         r"got \['forward'\]"):
        layer.forward({"forward": params["forward"]}, jnp.ones((1, 4, 2), jnp.float32))
    with pytest.raises(ValueError, match=r"GRU: expected x of shape \(B, T, 2\)"):
        layer.forward(params, jnp.ones((1, 4, 5), jnp.float32))
