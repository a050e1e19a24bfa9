"""Mixed precision training: bfloat16 compute, float32 master weights and optimizer, for both paths and the twin.

The 1000-step twin runs (every built-in task in bfloat16) are evidence in docs/gpu.md; here a short one.
"""

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mutants.base import mutant_of

import manualbp as mbp
from manualbp.cli import main
from manualbp.training import data
from manualbp.training.data import Batches
from manualbp.training.step import cast_floats
from manualbp.training.train import train, train_twin

SGD = optax.sgd(0.5)


@pytest.fixture(scope="module")
def spirals():
    return data.spirals(n_train=256, n_test=128)


def _mlp(last=mbp.Dense):
    model = mbp.Sequential(mbp.Dense(16), mbp.Tanh(), last(2))
    return model, mbp.SoftmaxCrossEntropy(), model.init(jax.random.key(0), (2,), jnp.float32)[0]


@mutant_of(mbp.Dense)
@dataclass(frozen=True)
class HalfBias(mbp.Dense):
    """db halved: far beyond bfloat16's rounding (a 1% error is within it, and no bfloat16 check can see that)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {**grads, "b": grads["b"] * 0.5}, dx


@pytest.mark.parametrize("grad", ["manual", "reference"])
def test_one_step_is_the_recipe(spirals, grad):
    """float32 params -> bfloat16 copy -> model forward and backward in bfloat16, the loss head in float32 ->
    float32 gradient -> optax on float32."""
    model, head, params = _mlp()
    key = jax.random.key(3)
    result = train(model, head, params, spirals, optimizer=SGD, steps=1, batch_size=64, grad=grad, key=key,
                   compute_dtype="bfloat16")
    assert {a.dtype for a in jax.tree_util.tree_leaves((result.params, result.opt_state))} <= {jnp.dtype(jnp.float32),
                                                                                             jnp.dtype(jnp.int32)}
    assert result.history["loss"].dtype == np.float32
    idx = Batches(len(spirals.x_train), 64, key, (0, 0)).next()
    x, y = jnp.asarray(spirals.x_train[idx], jnp.bfloat16), jnp.asarray(spirals.y_train[idx])
    def recipe(p):
        p16 = cast_floats(p, jnp.bfloat16)
        out, cache = model.forward(p16, x)
        loss, head_cache = head.forward(out.astype(jnp.float32), y)
        return loss, model.backward(p16, cache, head.backward(head_cache).astype(jnp.bfloat16))[0]

    loss, grads = jax.jit(recipe)(params)
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.bfloat16)}
    want = optax.apply_updates(params, SGD.update(cast_floats(grads, jnp.float32), SGD.init(params))[0])
    full = train(model, head, params, spirals, optimizer=SGD, steps=1, batch_size=64, grad=grad, key=key)
    for got, recipe, f32, p0 in zip(*(jax.tree_util.tree_leaves(t) for t in (result.params, want, full.params, params))):
        step, step_recipe, step_f32 = got - p0, recipe - p0, f32 - p0
        # the recipe's update to bfloat16's rounding (two compilations may round a fused op apart) ...
        assert float(jnp.linalg.norm(step - step_recipe)) <= 2e-2 * float(jnp.linalg.norm(step_recipe))
        # ... and not float32's: the step did compute in bfloat16
        assert float(jnp.linalg.norm(step - step_f32)) > 1e-4 * float(jnp.linalg.norm(step_f32))
    assert abs(float(result.history["loss"][0]) - float(loss)) <= 1e-2 * float(loss)


@pytest.mark.slow
def test_twin_in_bfloat16_passes_and_a_halved_bias_gradient_is_diverged(spirals):
    """The check compares the two paths at the same bfloat16 point, under bfloat16's error model: a bias gradient,
    a small sum of larger terms, can round by several percent in bfloat16 (the reference's own error against
    float64: 10x that excuses a difference), so the halved db shows within a few steps, not always at the first."""
    model, head, params = _mlp()
    ok = train_twin(model, head, params, spirals, optimizer=optax.adam(1e-2), steps=60, batch_size=64,
                    key=jax.random.key(1), compute_dtype="bfloat16")
    d = ok.divergence
    assert d.ok, d.summary()
    assert d.dtype == "bfloat16" and d.tolerance.norm == 3e-2 and d.worst()["error"] > 1e-4  # bfloat16 rounding
    assert {a.dtype for a in jax.tree_util.tree_leaves(ok.manual.params)} == {jnp.dtype(jnp.float32)}
    bad_model, _, _ = _mlp(HalfBias)
    bad = train_twin(bad_model, head, params, spirals, optimizer=optax.adam(1e-2), steps=5, batch_size=64,
                     key=jax.random.key(1), compute_dtype="bfloat16").divergence
    first = bad.first_failure
    assert first is not None and (first["kind"], first["parameter"]) == ("gradient", "2/b"), bad.summary()
    assert first["error"] > 0.4 and bad.grad[: first["step"], -1].min() > 0.4  # db is off by half at every step


@pytest.mark.parametrize(("compute", "params_dtype", "match"), [
    ("int32", jnp.float32, r"compute_dtype must be a floating dtype no wider than the parameters' \(float32\), "
                           r"e.g. 'bfloat16' with float32 parameters; got 'int32'"),
    ("float64", jnp.float32, r"no wider than the parameters' \(float32\).*got 'float64'"),
    ("nonsense", jnp.float32, r"got 'nonsense'"),
])
def test_bad_compute_dtypes(spirals, compute, params_dtype, match):
    model, head, params = _mlp()
    with pytest.raises(ValueError, match=match):
        train(model, head, params, spirals, steps=1, batch_size=8, key=jax.random.key(0), compute_dtype=compute)


@pytest.mark.slow
def test_the_cli_flag(capsys):
    code = main(["train", "--model", "mlp", "--data", "spirals", "--grad", "twin", "--steps", "20", "--batch-size",
                 "32", "--compute-dtype", "bfloat16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] and out["compute_dtype"] == "bfloat16" and out["dtype"] == "float32"
    assert out["divergence"]["dtype"] == "bfloat16" and out["divergence"]["steps"] == 20
