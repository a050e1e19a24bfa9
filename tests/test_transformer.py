"""TransformerBlock and the built-in GPT: every sub-layer's rows vs jax.grad, finite differences, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.models import get


@pytest.mark.slow
def test_builtin_gpt_matches_jax_grad_layer_by_layer():
    """Every sub-layer has its rows (that the built-in models pass in every precision: tests/test_verdicts.py)."""
    gpt = get("gpt")
    params, _ = gpt.model.init(jax.random.key(1), gpt.input_shape, jnp.float64)
    x, y, mask = gpt.make_batch(jax.random.key(2), 4, jnp.float64)  # the batch size of test_verdicts: same programs
    report = mbp.compare(gpt.model, gpt.head, params, x, y, mask)
    assert report.ok, str(report)
    layers = {r.layer for r in report.rows}
    for block in ("2", "3"):  # every sub-layer of both blocks has its own rows
        for child in ("ln1 LayerNorm", "attn MultiHeadAttention", "drop1 Dropout", "ln2 LayerNorm", "fc1 Dense",
                      "gelu GELU", "fc2 Dense", "drop2 Dropout"):
            assert f"{block}/{child}" in layers
    assert report.row("2/attn MultiHeadAttention", "dL/dy").ok and report.row("1 PositionalEmbedding", "dP").ok


def test_block_finite_differences():
    block = mbp.TransformerBlock(4, 2, hidden=6, causal=True, dropout=0.2, block_size=2)
    model = mbp.with_dropout_key(mbp.Sequential(block), jax.random.key(4))
    params, _ = model.init(jax.random.key(0), (5, 4), jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 4)))
    y = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 4)))
    report = mbp.gradcheck(model, mbp.MeanSquaredError(), params, x, y, k=3)
    assert report.ok, str(report)


def test_block_structure():
    block = mbp.TransformerBlock(8, 2)
    assert [n for n, _ in block.children] == ["ln1", "attn", "ln2", "fc1", "gelu", "fc2"]  # no dropout at rate 0
    params, shape = block.init(jax.random.key(0), (3, 8))
    assert shape == (3, 8) and params["fc1"]["W"].shape == (8, 32) and params["gelu"] == {}
    assert block.replace_children([layer for _, layer in block.children]) == block
    assert hash(block) == hash(mbp.TransformerBlock(8, 2))
    y = jax.eval_shape(lambda p, x: block.forward(p, x)[0], params, jax.ShapeDtypeStruct((2, 3, 8), jnp.float32))
    assert y.shape == (2, 3, 8)


def test_block_bad_input():
    block = mbp.TransformerBlock(8, 2)
    params, _ = block.init(jax.random.key(0), (3, 8))
    with pytest.raises(ValueError, match=r"TransformerBlock: expected x of rank 3, got shape \(3, 8\)"):
        block.forward(params, jnp.ones((3, 8), jnp.float32))
    with pytest.raises(ValueError, match=r"TransformerBlock: expected params as a dict with keys \['attn', 'fc1', "):
        block.forward({k: v for k, v in params.items() if k != "fc2"}, jnp.ones((2, 3, 8), jnp.float32))
    with pytest.raises(ValueError, match=r"TransformerBlock: input shape \(3, 6\) does not match features = 8"):
        block.init(jax.random.key(0), (3, 6))
    with pytest.raises(ValueError, match=r"TransformerBlock: features must be a positive int"):
        mbp.TransformerBlock(0, 2)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: features D = 10 is not divisible by num_heads = 4"):
        mbp.TransformerBlock(10, 4)
    with pytest.raises(ValueError, match=r"Dropout: rate must lie in \[0, 1\), got 1.5"):
        mbp.TransformerBlock(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match=r"Dropout: training mode \(rate 0.1\) needs a PRNG key"):
        mbp.TransformerBlock(8, 2, dropout=0.1).forward(params | {"drop1": {}, "drop2": {}}, jnp.ones((2, 3, 8), jnp.float32))


@pytest.mark.parametrize("kw, error, match", [
    ({"features": 5, "num_heads": 2}, ValueError, r"TransformerBlock: MultiHeadAttention: features D = 5 is not "
                                                  r"divisible by num_heads = 2"),
    ({"features": 4, "num_heads": 0}, ValueError, r"TransformerBlock: MultiHeadAttention: num_heads must be a positive "
                                                  r"int, got 0"),
    ({"features": 4, "num_heads": 2, "dropout": 1.5}, ValueError, r"TransformerBlock: Dropout: rate must lie in "
                                                                  r"\[0, 1\), got 1.5"),
    ({"features": 4, "num_heads": 2, "hidden": 0}, ValueError, r"TransformerBlock: Dense: features must be a positive "
                                                               r"int, got 0"),
    ({"features": 4, "num_heads": 2, "epsilon": -1.0}, ValueError, r"TransformerBlock: LayerNorm: epsilon must be"),
])
def test_bad_hyperparameters_name_the_block_and_the_child(kw, error, match):
    with pytest.raises(error, match=match):
        mbp.TransformerBlock(**kw)
