"""Heads: values and dL/dlogits vs optax + jax.grad, masks, softmax-over-[z, 0] = sigmoid, batch identity."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp import reference as ref
from manualbp.backprop import loss_and_grads
from manualbp.verify.report import compare_arrays

DTYPES = [jnp.float32, jnp.float64]


def _check_head(head, logits, labels, mask=None):
    value, cache = head.forward(logits, labels, mask)
    dlogits = head.backward(cache)
    r_value, r_dlogits = jax.value_and_grad(lambda z: ref.head_forward(head, z, labels, mask))(logits)
    tol = mbp.tolerance(logits.dtype)
    for row in (compare_arrays(head.name, "loss", value, r_value, tol),
                compare_arrays(head.name, "dL/dz", dlogits, r_dlogits, tol)):
        assert row.ok, row


def _logits(dtype, shape=(6, 5)):
    return 4 * jax.random.normal(jax.random.key(0), shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_softmax_cross_entropy_integer_and_probability_targets(dtype):
    z = _logits(dtype)
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    _check_head(mbp.SoftmaxCrossEntropy(), z, labels)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), z.shape, dtype))
    _check_head(mbp.SoftmaxCrossEntropy(), z, probs)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sequence_logits_with_mask(dtype):
    z = _logits(dtype, (2, 4, 3))
    labels = jnp.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    for head, y in [(mbp.SoftmaxCrossEntropy(), labels),
                    (mbp.SigmoidBinaryCrossEntropy(), (z > 0).astype(dtype)),
                    (mbp.MeanSquaredError(), jnp.ones_like(z))]:
        _check_head(head, z, y, mask)
        _check_head(head, z, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sigmoid_bce_and_mse(dtype):
    z = _logits(dtype, (6, 2))
    _check_head(mbp.SigmoidBinaryCrossEntropy(), z, jax.random.uniform(jax.random.key(2), z.shape, dtype))
    _check_head(mbp.MeanSquaredError(), z, jax.random.normal(jax.random.key(3), z.shape, dtype))


def test_softmax_over_z_and_zero_is_sigmoid():
    z = jnp.linspace(-30, 30, 41)[:, None]
    y = (jnp.arange(41) % 2).astype(jnp.float64)[:, None]
    sig_value, sig_cache = mbp.SigmoidBinaryCrossEntropy().forward(z, y)
    two = jnp.concatenate([z, jnp.zeros_like(z)], axis=-1)
    soft_value, soft_cache = mbp.SoftmaxCrossEntropy().forward(two, 1 - y[:, 0].astype(jnp.int32))
    tol = mbp.tolerance(jnp.float64)
    assert compare_arrays("heads", "loss", soft_value, sig_value, tol).ok
    dz_soft = mbp.SoftmaxCrossEntropy().backward(soft_cache)[:, :1]
    assert compare_arrays("heads", "dL/dz", dz_soft, mbp.SigmoidBinaryCrossEntropy().backward(sig_cache), tol).ok


def test_mse_is_the_quadratic_cost():
    a, y = jnp.array([[1.0, 2.0], [3.0, 5.0]]), jnp.array([[0.0, 0.0], [3.0, 1.0]])
    value, cache = mbp.MeanSquaredError().forward(a, y)
    assert float(value) == pytest.approx((1 + 4 + 0 + 16) / (2 * 2))  # 1/(2n) sum ||a - y||^2
    assert jnp.allclose(mbp.MeanSquaredError().backward(cache), (a - y) / 2)


def test_batch_identity_mean_of_per_example_gradients():
    """Gradient of the mean loss = mean of per-example gradients (vmap, no Python loop over examples)."""
    model = mbp.Sequential(mbp.Dense(8), mbp.Tanh(), mbp.Dense(3))
    head = mbp.SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (7, 4), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2, 0])
    _, batch_grads, _, _ = loss_and_grads(model, head, params, x, y)
    per_example = jax.vmap(lambda xi, yi: loss_and_grads(model, head, params, xi[None], yi[None])[1])(x, y)
    mean_grads = jax.tree_util.tree_map(lambda g: g.mean(axis=0), per_example)
    tol = mbp.tolerance(jnp.float64)
    for g, m in zip(jax.tree_util.tree_leaves(batch_grads), jax.tree_util.tree_leaves(mean_grads)):
        assert compare_arrays("mlp", "grad", g, m, tol).ok


def test_label_errors():
    head = mbp.SoftmaxCrossEntropy()
    z = jnp.zeros((3, 4))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: labels must lie in \[0, 4\) for 4 classes, got values in \[0, 7\]"):
        head.forward(z, jnp.array([0, 1, 7]))
    with pytest.raises(TypeError, match=r"SoftmaxCrossEntropy: float labels must be targets of logits' shape \(3, 4\)"):
        head.forward(z, jnp.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: expected integer labels of shape \(3,\) for logits \(3, 4\), got \(2,\)"):
        head.forward(z, jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: expected mask of shape \(3,\)"):
        head.forward(z, jnp.array([0, 1, 2]), jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="the mask selects no example"):
        head.forward(z, jnp.array([0, 1, 2]), jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"MeanSquaredError: expected labels of the outputs' shape \(3, 4\), got \(3,\)"):
        mbp.MeanSquaredError().forward(z, jnp.zeros((3,)))
    with pytest.raises(TypeError, match="SigmoidBinaryCrossEntropy: expected logits of a floating dtype"):
        mbp.SigmoidBinaryCrossEntropy().forward(jnp.zeros((3, 4), jnp.int32), jnp.zeros((3, 4)))
