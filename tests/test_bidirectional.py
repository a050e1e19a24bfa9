"""Bidirectional: manual vs jax.grad of the reference for RNN, LSTM and GRU inside (dtype x jit x all steps / last
step), rows for both directions in compare, what the backward direction reads, a wrong time reversal caught,
finite differences, bad input; over variable-length layers, the same, and each sequence alone cut to its length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp
from manualbp.verify.verdict import judge


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
        cf, cb, split, _, _ = cache
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


# ---- variable lengths: input (x, lengths) ---------------------------------------------------------------

LENGTHS = (5, 2, 0)  # full, cut, empty (B = 3, T = 5)


def _with_lengths(dtype, seed=1, lengths=LENGTHS):
    return _rand((len(lengths), 5, 2), dtype, seed), host(np.array(lengths, np.int32))


# inner layer(s), dtype, jit
LENGTH_CONFIGS = [
    ((mbp.GRU(3, variable_length=True),), jnp.float64, True),
    ((mbp.LSTM(2, return_sequences=False, variable_length=True), mbp.RNN(3, return_sequences=False,
                                                                          variable_length=True)), jnp.float32, True),
    ((mbp.RNN(3, variable_length=True),), jnp.float32, False),
]


@pytest.mark.parametrize("layers,dtype,jit", LENGTH_CONFIGS, ids=str)
def test_variable_lengths_match_reference(layers, dtype, jit):
    """A random dy, nonzero at padded steps too: those reach nothing in either direction."""
    layer = mbp.Bidirectional(*layers)
    assert layer.variable_length
    params, out_shape = layer.init(jax.random.key(0), ((5, 2), ()), dtype)
    report = mbp.check_layer(layer, params, _with_lengths(dtype), jit=jit)
    assert report.ok, str(report)
    assert report.row("Bidirectional", "forward y").shape == (len(LENGTHS), *out_shape)
    assert {r.quantity for r in report.rows if r.quantity.startswith("dL/dx")} == {"dL/dx.0"}  # none for lengths


def test_variable_lengths_in_compare_have_rows_for_both_directions():
    model, T = mbp.Sequential(mbp.Bidirectional(mbp.GRU(3, variable_length=True), mbp.LSTM(2, variable_length=True)),
                              mbp.Dense(4)), 5
    params, _ = model.init(jax.random.key(0), ((T, 2), ()), jnp.float64)
    y = host(np.random.default_rng(2).integers(0, 4, (len(LENGTHS), T)))
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, _with_lengths(jnp.float64), y)
    assert report.ok, str(report)
    for label, kinds in (("0/forward GRU", ["h"]), ("0/backward LSTM", ["h", "c"])):
        for kind in kinds:
            for t in range(T):
                report.row(label, f"dL/d{kind}[t={t}]")


@pytest.mark.parametrize("seq", [True, False], ids=["all steps", "last step"])
def test_each_sequence_alone_cut_to_its_length(seq):
    """The plain Bidirectional on x[b, :L] alone: the same outputs (0 after L), dx (0 after L) and, summed, dparams.

    This pins the meaning, which the reference twin cannot: the backward GRU reads x[L-1] .. x[0], not the padding
    first, and a sequence of length 0 outputs zeros and contributes no gradient.
    """
    tol = mbp.tolerance(jnp.float64)
    layer = mbp.Bidirectional(mbp.GRU(3, return_sequences=seq, variable_length=True))
    plain = mbp.Bidirectional(mbp.GRU(3, return_sequences=seq))
    x, lengths = _with_lengths(jnp.float64)
    params, _ = layer.init(jax.random.key(0), ((5, 2), ()), jnp.float64)
    y, cache = layer.forward(params, (x, lengths))
    dy = _rand(y.shape, jnp.float64, 3)
    dparams, (dx, dlengths) = layer.backward(params, cache, dy)
    assert dlengths is None
    summed = jax.tree_util.tree_map(jnp.zeros_like, dparams)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            assert np.all(np.asarray(y[b]) == 0) and np.all(np.asarray(dx[b]) == 0)
            continue
        y_b, cache_b = plain.forward(params, x[b : b + 1, :n])
        dparams_b, dx_b = plain.backward(params, cache_b, dy[b : b + 1, :n] if seq else dy[b : b + 1])
        assert judge("y", f"sequence {b}", y[b, :n] if seq else y[b], y_b[0], tol).ok
        assert judge("dx", f"sequence {b}", dx[b, :n], dx_b[0], tol).ok
        assert np.all(np.asarray(dx[b, n:]) == 0) and (not seq or np.all(np.asarray(y[b, n:]) == 0))
        summed = jax.tree_util.tree_map(jnp.add, summed, dparams_b)
    for path, a in jax.tree_util.tree_leaves_with_path(dparams):
        expected = summed
        for key in path:
            expected = expected[key.key]
        assert judge("dparams", jax.tree_util.keystr(path), a, expected, tol).ok


class _WholeArrayReversalOfDx(mbp.Bidirectional):
    """A realistic bug: the backward direction's dx is flipped over all T steps, not over each sequence's L steps."""

    def backward(self, params, cache, dy):
        cf, cb, split, lengths, _ = cache
        dyb = _reverse_per_sequence(dy[..., split:], lengths)
        gf, dxf = self.layer.backward(params["forward"], cf, dy[..., :split])
        gb, dxb = self.backward_layer.backward(params["backward"], cb, dyb)
        return {"forward": gf, "backward": gb}, (dxf[0] + dxb[0][:, ::-1], None)


def _reverse_per_sequence(a, lengths):
    t, n = np.arange(a.shape[1])[None, :], np.asarray(lengths)[:, None]
    source = np.where(t < n, n - 1 - t, t)
    return jnp.where(host(t < n)[..., None], a[np.arange(a.shape[0])[:, None], source], 0)


def test_a_whole_array_reversal_of_dx_fails_at_the_input_gradient():
    bad = _WholeArrayReversalOfDx(mbp.RNN(3, variable_length=True))
    params, _ = bad.init(jax.random.key(0), ((5, 2), ()), jnp.float64)
    report = mbp.check_layer(bad, params, _with_lengths(jnp.float64))
    assert [r.quantity for r in report.rows if not r.ok] == ["dL/dx.0"]  # forward and every parameter gradient agree


def test_variable_lengths_against_finite_differences():
    model = mbp.Sequential(mbp.Bidirectional(mbp.LSTM(2, return_sequences=False, variable_length=True)), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), ((5, 2), ()), jnp.float64)
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, _with_lengths(jnp.float64), jnp.array([0, 1, 2]),
                           k=3)
    assert report.ok, str(report)


# ---- bad input -------------------------------------------------------------------------------------------


def test_bad_construction():
    with pytest.raises(ValueError, match=r"Bidirectional: the forward layer GRU has initial_state='given'; .*zeros"):
        mbp.Bidirectional(mbp.GRU(3, initial_state="given"))
    with pytest.raises(ValueError, match=r"Bidirectional: both layers must agree on return_sequences, got True and False"):
        mbp.Bidirectional(mbp.GRU(3), mbp.RNN(3, return_sequences=False))
    with pytest.raises(TypeError, match=r"Bidirectional: expected the forward layer to be a layer .*got int 3"):
        mbp.Bidirectional(3)
    with pytest.raises(ValueError, match=r"Bidirectional: both layers must agree on variable_length, got True and False"):
        mbp.Bidirectional(mbp.GRU(3, variable_length=True), mbp.GRU(3))
    with pytest.raises(ValueError, match=r"Bidirectional: variable_length=True, but the layers have variable_length=False"):
        mbp.Bidirectional(mbp.GRU(3), variable_length=True)
    with pytest.raises(ValueError, match=r"Bidirectional: variable_length must be a bool or None, got 1"):
        mbp.Bidirectional(mbp.GRU(3), variable_length=1)


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


def test_bad_input_with_lengths():
    layer = mbp.Bidirectional(mbp.GRU(3, variable_length=True))
    params, _ = layer.init(jax.random.key(0), ((4, 2), ()), jnp.float32)
    x = jnp.ones((2, 4, 2), jnp.float32)
    with pytest.raises(TypeError, match=r"Bidirectional: with variable_length=True layers expected the input as a tuple "
                                        r"\(x, lengths\), got float32\[2,4,2\]"):
        layer.forward(params, x)
    with pytest.raises(TypeError, match=r"Bidirectional: got a tuple input, but the layers have variable_length=False"):
        mbp.Bidirectional(mbp.GRU(3)).forward(params, (x, jnp.array([4, 1])))
    with pytest.raises(ValueError, match=r"GRU: lengths must lie in \[0, 4\] \(T = 4 steps\), got values in \[1, 5\]"):
        layer.forward(params, (x, jnp.array([5, 1])))
    with pytest.raises(ValueError, match=r"GRU: expected lengths of shape \(2,\) \(one per sequence\), got \(3,\)"):
        layer.forward(params, (x, jnp.array([4, 1, 1])))
