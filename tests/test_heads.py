"""Heads (heads.py): values and dL/dlogits vs optax + jax.grad, masks, softmax-over-[z, 0] = sigmoid, batch identity."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp
from manualbp import reference as ref
from manualbp.backprop import loss_and_grads
from manualbp.verify.verdict import judge

DTYPES = [jnp.float32, jnp.float64]


@partial(jax.jit, static_argnums=0)  # one program per head and shapes (run eagerly: one per operation)
def _head_and_reference(head, logits, labels, mask):
    value, cache = head.forward(logits, labels, mask)
    r_value, r_dlogits = jax.value_and_grad(lambda z: ref.head_forward(head, z, labels, mask))(logits)
    return value, head.backward(cache), r_value, r_dlogits


def _check_head(head, logits, labels, mask=None):
    value, dlogits, r_value, r_dlogits = _head_and_reference(head, logits, labels, mask)
    tol = mbp.tolerance(logits.dtype)
    for row in (judge(head.name, "loss", value, r_value, tol),
                judge(head.name, "dL/dz", dlogits, r_dlogits, tol)):
        assert row.ok, row


def _logits(dtype, shape=(6, 5)):
    return host(4 * np.random.default_rng(0).standard_normal(shape), dtype)


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
    assert judge("heads", "loss", soft_value, sig_value, tol).ok
    dz_soft = mbp.SoftmaxCrossEntropy().backward(soft_cache)[:, :1]
    assert judge("heads", "dL/dz", dz_soft, mbp.SigmoidBinaryCrossEntropy().backward(sig_cache), tol).ok


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
    # compiled: one program each, where the eager vmap compiled one per batched primitive
    _, batch_grads, _, _ = jax.jit(lambda x, y: loss_and_grads(model, head, params, x, y))(x, y)
    per_example = jax.jit(jax.vmap(lambda xi, yi: loss_and_grads(model, head, params, xi[None], yi[None])[1]))(x, y)
    mean_grads = jax.tree_util.tree_map(lambda g: g.mean(axis=0), per_example)
    tol = mbp.tolerance(jnp.float64)
    for g, m in zip(jax.tree_util.tree_leaves(batch_grads), jax.tree_util.tree_leaves(mean_grads)):
        assert judge("mlp", "grad", g, m, tol).ok


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


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_soft_targets_whose_rows_do_not_sum_to_1_get_the_general_rule(dtype):
    """dz = w (softmax(z) sum_i c_i - c): rows summing to 0.5, 2 and 0 (padding) as well as 1."""
    z = _logits(dtype, (5, 4))
    c = jnp.array([[0.25, 0.25, 0.0, 0.0],  # sums to 0.5
                   [1.0, 0.5, 0.0, 0.5],  # 2
                   [0.0, 0.0, 0.0, 0.0],  # 0: a padding row
                   [0.1, 0.2, 0.3, 0.4],  # 1
                   [0.0, 0.0, 1.0, 0.0]], dtype)  # one-hot
    _check_head(mbp.SoftmaxCrossEntropy(), z, c)
    _check_head(mbp.SoftmaxCrossEntropy(), z, c, jnp.array([1, 1, 0, 1, 1]))
    value, cache = mbp.SoftmaxCrossEntropy().forward(z, c)
    dz = mbp.SoftmaxCrossEntropy().backward(cache)
    assert jnp.all(dz[2] == 0)  # a zero row contributes nothing
    p = jax.nn.softmax(z)
    assert judge("SCE", "dz", dz, (p * c.sum(-1, keepdims=True) - c) / 5, mbp.tolerance(dtype)).ok


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_rows_summing_to_1_and_integer_labels_keep_softmax_minus_c(dtype):
    """The other branch: for one-hot or probability rows (sum 1) the general rule is p - c, as integer labels give."""
    z = _logits(dtype, (4, 3))
    labels = jnp.array([0, 2, 1, 2])
    one_hot = jax.nn.one_hot(labels, 3, dtype=dtype)
    head = mbp.SoftmaxCrossEntropy()
    dz_int = head.backward(head.forward(z, labels)[1])
    dz_soft = head.backward(head.forward(z, one_hot)[1])
    expected = (jax.nn.softmax(z) - one_hot) / 4
    tol = mbp.tolerance(dtype)
    assert judge("SCE", "int", dz_int, expected, tol).ok and judge("SCE", "soft", dz_soft, expected, tol).ok


def test_soft_targets_in_a_model_compare_clean():
    model = mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
    c = jnp.array([[0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, c)
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.uint16], ids=lambda d: jnp.dtype(d).name)
def test_integer_labels_of_any_dtype_give_the_int32_result(dtype):
    """300 classes, labels in a narrow dtype: the one-hot comparison must not wrap (uint8 255 vs class 255 + 256)."""
    z = _logits(jnp.float64, (4, 300))
    labels32 = jnp.array([0, 127, 255 if dtype != jnp.int8 else 100, 3])
    head = mbp.SoftmaxCrossEntropy()
    v32, c32 = jax.jit(head.forward)(z, labels32)
    v, c = jax.jit(head.forward)(z, labels32.astype(dtype))
    assert v == v32 and jnp.array_equal(head.backward(c), head.backward(c32))
    _check_head(head, z, labels32.astype(dtype))


@pytest.mark.parametrize("head", [mbp.SoftmaxCrossEntropy(), mbp.SigmoidBinaryCrossEntropy(), mbp.MeanSquaredError()],
                         ids=lambda h: h.name)
def test_labels_none_and_a_complex_mask_are_refused_naming_the_head(head):
    z = jnp.zeros((2, 3), jnp.float32)
    with pytest.raises(TypeError, match=rf"{head.name}: expected labels as an array of numbers, got None"):
        head.forward(z, None)
    labels = jnp.array([0, 1]) if head.name == "SoftmaxCrossEntropy" else jnp.zeros((2, 3), jnp.float32)
    with pytest.raises(TypeError, match=rf"{head.name}: expected a mask of real numbers or bools \(weights >= 0\), got "
                                        r"complex64\[2\]"):
        head.forward(z, labels, jnp.ones(2, jnp.complex64))
