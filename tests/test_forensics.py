"""Gradient forensics: each kind of diagnosis on a planted difference, in reports, and never on rounding.

The fits themselves run on NumPy arrays (``forensics.diagnose``); the reports (compare, check_layer, check_vjp,
gradcheck) attach them to failing rows. The catalog's figure (the right kind for K of M mutants) is asserted in
tests/test_mutations.py.
"""

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from arrays import host

import manualbp as mbp
from manualbp.verify import forensics as fx

RNG = np.random.default_rng(0)
R = RNG.standard_normal((6, 5, 4))
TOL = 1e-12


def _kind(m, r=R, ctx=None, allowed=TOL):
    return fx.diagnose(m, r, allowed, ctx)


def test_scale_named_by_a_simple_fraction_and_the_layer_size():
    d = _kind(R / 64, ctx=fx.Context(sizes={"the batch size N": 64}))
    assert d.kind == fx.SCALE and d.params["fraction"] == "1/64" and "64 is the batch size N" in d.text
    assert "averaged where the gradient sums" in d.text
    d = _kind(R * np.sqrt(8), ctx=fx.Context(sizes={"the head dimension 8": 8}))
    assert d.kind == fx.SCALE and "sqrt(8) is sqrt of the head dimension 8" in d.text
    assert _kind(-R).kind == fx.SIGN


def test_rearrangements():
    w = RNG.standard_normal((4, 4))
    assert _kind(w.T, w).params == {"permutation": (1, 0)} and _kind(w.T, w).kind == fx.REARRANGED
    k = RNG.standard_normal((3, 3, 2, 2))
    assert _kind(np.flip(k, (0, 1)), k).params == {"flip": (0, 1)}  # a kernel not flipped in space
    d = _kind(fx._shift(R, 1, 1))
    assert d.kind == fx.REARRANGED and d.params == {"axis": 1, "shift": 1}  # h_(t-1) where h_t belongs
    img = RNG.standard_normal((2, 6, 6, 3))
    m = fx._shift(fx._shift(img, 1, -1), 2, -1)
    m[:, -1], m[:, :, -1] = 0.5, -0.5  # what the vacated edge holds: the padding placed on the other side
    d = _kind(m, img)
    assert d.kind == fx.REARRANGED and d.params == {"shifts": {1: -1, 2: -1}, "edge_excepted": True}
    wide = RNG.standard_normal((6, 4))
    assert _kind(wide.T.reshape(6, 4), wide).params == {"reshape_of_transpose": True}
    assert _kind(RNG.permutation(R.ravel()).reshape(R.shape)).params == {"permuted": True}


def test_missing_and_extra_paths_and_zero():
    dy = RNG.standard_normal(R.shape)
    ctx = fx.Context(others={"3 Residual dL/dy": dy})
    d = _kind(R - dy, ctx=ctx)
    assert d.kind == fx.MISSING_PATH and d.params["quantity"] == "3 Residual dL/dy"
    assert _kind(R + dy, ctx=ctx).kind == fx.EXTRA_PATH
    assert _kind(np.zeros_like(R)).kind == fx.ZERO


def test_a_term_of_a_named_sum():
    terms = {"direct": RNG.standard_normal(R.shape), "mean": RNG.standard_normal(R.shape),
             "variance": RNG.standard_normal(R.shape)}
    r = sum(terms.values())
    d = fx.diagnose(terms["direct"] + terms["variance"], r, TOL, fx.Context(terms=terms))
    assert d.kind == fx.TERM and list(d.params["terms"]) == ["mean"] and "the mean term is missing" in d.text


def test_localised_sets():
    r = R.copy()
    r[:, 2, :] = 0  # a masked step: the reference is exactly 0 there
    m = r.copy()
    m[:, 2, :] = 1.0
    d = _kind(m, r, fx.Context(axes={1: "time step"}))
    assert d.kind == fx.LOCALISED and d.params["where"] == "reference == 0"
    m = R.copy()
    m[:, :4, :] *= 1.3  # right only at the last step: a BPTT carry dropped
    d = _kind(m, ctx=fx.Context(axes={1: "time step"}))
    assert d.kind == fx.LOCALISED and d.params["agrees"] == [4] and "every time step but 4 (the last)" in d.text
    img = RNG.standard_normal((2, 6, 6, 3))
    m = img.copy()
    m[:, 0, :, :] *= 1.5
    m[:, :, -1, :] *= 1.5
    assert _kind(m, img, fx.Context(spatial=(1, 2))).params == {"where": "border"}
    m = img.copy()
    m[..., 1] += 1
    d = _kind(m, img, fx.Context(axes={3: "channel"}))
    assert d.kind == fx.LOCALISED and d.params == {"axis": 3, "indices": [1]} and "channel 1" in d.text


def test_no_pattern_and_no_structure_on_rounding():
    """A difference spread everywhere is no pattern; rounding just above the tolerance is never a structured kind."""
    m = R + RNG.standard_normal(R.shape)
    d = _kind(m)
    assert d.kind == fx.NONE and len(d.worst) == 5
    index, got, want = d.worst[0]
    assert (got, want) == (m[index], R[index]) and abs(got - want) == np.abs(m - R).max()
    noise = R * (1 + 3e-12 * RNG.standard_normal(R.shape))  # 3x a float64 tolerance of 1e-12, everywhere
    assert _kind(noise).kind == fx.NONE
    spike = R.copy()
    spike[0, 0, 0] *= 1 + 1e-9  # one entry 1e-9 off: above 1e-12, but rounding-sized, not gross
    assert _kind(spike, allowed=1e-10).kind == fx.NONE


# ---- in reports ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Halved:
    """A user's y = a x whose backward halves dx."""

    def forward(self, params, x):
        return params["a"] * x, x

    def backward(self, params, x, dy):
        return {"a": jnp.sum(dy * x)}, dy * params["a"] / 2


def test_check_layer_names_the_scale_and_shows_it_everywhere():
    params, x = {"a": host(np.float64(1.5))}, host(RNG.standard_normal((4, 3)))
    report = mbp.check_layer(Halved(), params, x, reference=lambda p, x: p["a"] * x)
    fail = report.first_failure
    assert fail.quantity == "dL/dx" and fail.diagnosis.kind == fx.SCALE and fail.diagnosis.params["fraction"] == "1/2"
    text = str(report)
    assert "^ diagnosis: manual = 1/2 x reference" in text and "diagnosis: manual = 1/2" in report.summary()
    d = json.loads(json.dumps(report.to_dict()))
    assert d["first_failure"]["diagnosis"]["kind"] == "scale" and d["rows"][1]["diagnosis"]["worst"]
    assert report.row("Halved", "forward y").diagnosis is None


def test_compare_diagnoses_the_first_failure_now_and_the_rest_on_request():
    class HalvedTanh(mbp.Tanh):
        def backward(self, params, cache, dy):
            return {}, super().backward(params, cache, dy)[1] / 2

    mbp.register_reference(HalvedTanh, lambda layer, params, x: jnp.tanh(x))
    model = mbp.Sequential(mbp.Dense(4), HalvedTanh(), mbp.Dense(3))
    params = model.init(jax.random.key(0), (5,), jnp.float64)[0]
    x, y = host(RNG.standard_normal((6, 5))), host(np.array([0, 1, 2, 0, 1, 2]))
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.first_failure.diagnosis.kind == fx.SCALE
    later = [r for r in report.rows if not r.ok][1:]
    assert later and all(r.diagnosis is None for r in later)  # not computed until asked
    assert len(report.diagnose()) == sum(not r.ok for r in report.rows) and all(r.diagnosis for r in later)
    clean = mbp.compare(mbp.Sequential(mbp.Dense(4), mbp.Tanh(), mbp.Dense(3)), mbp.SoftmaxCrossEntropy(), params, x, y)
    assert clean.ok and clean.diagnose() == [] and all(r.diagnosis is None for r in clean.rows)


def test_low_precision_rounding_fails_get_no_structured_diagnosis():
    """A correct model judged by float32's fixed rule in bfloat16 FAILs on rounding alone: never a named kind."""
    model = mbp.Sequential(mbp.Dense(8), mbp.Tanh(), mbp.Dense(3))
    params = model.init(jax.random.key(0), (5,), jnp.bfloat16)[0]
    x, y = host(RNG.standard_normal((16, 5)), jnp.bfloat16), host(RNG.integers(0, 3, 16))
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y, verdict="fixed")
    assert report.status == "FAIL"
    assert {d.kind for d in report.diagnose()} == {fx.NONE}


def test_check_vjp_and_gradcheck_carry_diagnoses():
    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, x), lambda x, dy: (-2 * x * dy,))  # the sign flipped
    report = mbp.check_vjp(square, lambda x: x * x, host(RNG.standard_normal((3, 4))))
    assert report.row("square", "x").diagnosis.kind == fx.SIGN

    class DoubledDb(mbp.Dense):
        def backward(self, params, cache, dy):
            grads, dx = super().backward(params, cache, dy)
            return {**grads, "b": 2 * grads["b"]}, dx

    model = mbp.Sequential(DoubledDb(3), mbp.Tanh(), mbp.Dense(2))
    params = model.init(jax.random.key(1), (4,), jnp.float64)[0]
    x, y = host(RNG.standard_normal((5, 4))), host(np.array([0, 1, 1, 0, 1]))
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y, mode="exhaustive")
    assert (report.first_failure.layer, report.first_failure.quantity) == ("0 DoubledDb", "db")
    assert report.first_failure.diagnosis.kind == fx.SCALE and report.first_failure.diagnosis.params["fraction"] == "2"


def test_a_diverged_twin_run_diagnoses_its_first_diverging_gradient():
    from mutants import twin

    case = next(c for c in twin.TWIN_CASES if c.name == "DenseDbMean")
    divergence = twin.run(case, mutated=True, steps=2)
    assert divergence.first_failure["step"] == 1 and divergence.first_failure["parameter"] == "0/b"
    d = divergence.diagnosis
    assert d.kind == fx.SCALE and d.params["fraction"] == "1/32" and "the batch size N" in d.text
    assert "diagnosis: manual = 1/32 x reference" in divergence.summary()
    assert divergence.to_dict()["diagnosis"]["kind"] == "scale"
    assert twin.run(case, mutated=False, steps=2).diagnosis is None
