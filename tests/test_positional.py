"""PositionalEmbedding (positional.py): vs jax.grad (both dtypes, jit and not), finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host, normal

import manualbp as mbp


@pytest.mark.parametrize(("dtype", "T", "jit"), [(jnp.float32, 6, True), (jnp.float64, 4, False)])
def test_positional_embedding_matches_reference(dtype, T, jit):
    layer = mbp.PositionalEmbedding(6, 3)
    params, shape = layer.init(jax.random.key(0), (T, 3), dtype)
    assert shape == (T, 3) and params["P"].shape == (6, 3)
    report = mbp.check_layer(layer, params, normal(1, (2, T, 3), dtype), jit=jit)
    assert report.ok, str(report)
    x = jnp.ones((2, T, 3), dtype)
    dparams, _ = layer.backward(params, layer.forward(params, x)[1], x)
    assert jnp.all(dparams["P"][:T] == 2) and jnp.all(dparams["P"][T:] == 0)  # sum over the batch; unused rows 0


def test_positional_embedding_finite_differences():
    model = mbp.Sequential(mbp.Embedding(5, 4), mbp.PositionalEmbedding(8, 4), mbp.Dense(5))
    params, _ = model.init(jax.random.key(0), (6,), jnp.float64)
    ids = host(np.random.default_rng(2).integers(0, 5, (3, 6)))
    report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, ids, ids, mode="exhaustive")
    assert report.ok, str(report)


def test_positional_embedding_bad_input():
    layer = mbp.PositionalEmbedding(4, 3)
    params, _ = layer.init(jax.random.key(0), (4, 3), jnp.float64)
    with pytest.raises(ValueError, match=r"PositionalEmbedding: sequence length T = 5 exceeds max_len = 4 "
                                         r"\(x of shape \(2, 5, 3\)\)"):
        layer.forward(params, jnp.ones((2, 5, 3)))
    with pytest.raises(ValueError, match=r"sequence length T = 9 exceeds max_len = 4"):
        layer.init(jax.random.key(0), (9, 3))
    with pytest.raises(ValueError, match=r"PositionalEmbedding: expected x of shape \(B, T, 3\), got \(2, 4, 2\)"):
        layer.forward(params, jnp.ones((2, 4, 2)))
    with pytest.raises(ValueError, match=r"expected x of rank 3, got shape \(4, 3\)"):
        layer.forward(params, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"expected parameter P of shape \(4, 3\) \(max_len, features\), got \(5, 3\)"):
        layer.forward({"P": jnp.ones((5, 3))}, jnp.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=r"PositionalEmbedding: max_len must be a positive int"):
        mbp.PositionalEmbedding(0, 3)
