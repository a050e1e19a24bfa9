"""Invalid values: an error wherever the values are concrete, NaN (or a checkify error) where they are traced.

Labels out of range, Embedding ids out of range, bad masks: ``mbp.value_and_grad`` checks them before
its internal jit, so the default (jit) path raises the same message as ``jit=False``. Under a user's
own ``jax.jit`` the loss is NaN and so is every invalid row's gradient, in the manual path and in the
reference alike, and ``jax.experimental.checkify`` turns them into the error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify.verdict import judge

MLP = mbp.Sequential(mbp.Dense(3))
EMB = mbp.Sequential(mbp.Embedding(5, 4), mbp.Dense(3))
SCE = mbp.SoftmaxCrossEntropy()
LABELS = r"SoftmaxCrossEntropy: labels must lie in \[0, 3\) for 3 classes, got values in "


def _mlp():
    params, _ = MLP.init(jax.random.key(0), (4,), jnp.float64)
    return params, jax.random.normal(jax.random.key(1), (4, 4), jnp.float64)


def _emb():
    params, _ = EMB.init(jax.random.key(0), (3,), jnp.float64)
    return params


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("labels, span", [([3, 1, 2, 1], r"\[1, 3\]"), ([-1, 1, 2, 1], r"\[-1, 2\]")])
def test_labels_out_of_range_raise_on_the_default_path(labels, span, jit):
    params, x = _mlp()
    with pytest.raises(ValueError, match=LABELS + span):
        mbp.value_and_grad(MLP, SCE, jit=jit)(params, x, jnp.array(labels))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_embedding_ids_out_of_range_raise_on_the_default_path(jit):
    ids = jnp.array([[0, 1, 2], [4, 5, 0]])
    with pytest.raises(ValueError, match=r"Embedding: ids must lie in \[0, 5\) \(E has shape \(5, 4\)\), got values in \[0, 5\]"):
        mbp.value_and_grad(EMB, SCE, jit=jit)(_emb(), ids, jnp.zeros((2, 3), jnp.int32))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_an_all_zero_mask_raises_on_the_default_path(jit):
    params, x = _mlp()
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: the mask selects no example \(all zeros\)"):
        mbp.value_and_grad(MLP, SCE, jit=jit)(params, x, jnp.array([0, 1, 2, 1]), jnp.zeros(4))


def test_check_values_alone_checks_labels_ids_masks_and_shapes_without_computing():
    from manualbp.backprop import check_values

    params, x = _mlp()
    check_values(MLP, SCE, params, x, [0, 1, 2, 1], [1, 1, 0, 1])  # valid: lists are fine
    with pytest.raises(ValueError, match=LABELS):
        check_values(MLP, SCE, params, x, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy: expected integer labels of shape \(4,\) for logits \(4, 3\)"):
        check_values(MLP, SCE, params, x, jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"Embedding: ids must lie in \[0, 5\)"):
        check_values(EMB, SCE, _emb(), jnp.array([[0, -3, 1]]), jnp.zeros((1, 3), jnp.int32))


def test_under_an_outer_jit_an_invalid_label_gives_nan_not_a_plausible_loss():
    params, x = _mlp()
    labels = jnp.array([3, 1, 2, 1])
    loss, grads = jax.jit(mbp.value_and_grad(MLP, SCE))(params, x, labels)
    r_loss, r_grads = jax.jit(ref.value_and_grad(MLP, SCE))(params, x, labels)
    assert np.isnan(loss) and np.isnan(r_loss)
    assert all(np.isnan(g).all() for g in jax.tree_util.tree_leaves((grads, r_grads)))  # dW = x^T dz meets the NaN row


@pytest.mark.parametrize("labels", [[3, 1, 2, 1], [1, 1, -1, 0]])
def test_under_jit_the_invalid_rows_gradient_is_nan_in_manual_and_reference(labels):
    z = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64)
    y = jnp.array(labels)
    dz = jax.jit(lambda z, y: SCE.backward(SCE.forward(z, y)[1]))(z, y)
    dz_ref = jax.jit(jax.grad(lambda z, y: ref.head_forward(SCE, z, y)))(z, y)
    bad = (y < 0) | (y >= 3)
    assert np.array_equal(np.isnan(dz).all(axis=1), bad) and np.array_equal(np.isnan(dz_ref).all(axis=1), bad)
    tol = mbp.tolerance(jnp.float64)
    assert judge("SCE", "dz", dz[~bad], dz_ref[~bad], tol).ok


def test_under_jit_an_invalid_embedding_id_gives_a_nan_loss():
    ids = jnp.array([[0, 1, 7]])
    loss, _ = jax.jit(mbp.value_and_grad(EMB, SCE))(_emb(), ids, jnp.zeros((1, 3), jnp.int32))
    r_loss, _ = jax.jit(ref.value_and_grad(EMB, SCE))(_emb(), ids, jnp.zeros((1, 3), jnp.int32))
    assert np.isnan(loss) and np.isnan(r_loss)


def test_checkify_turns_the_traced_checks_into_errors():
    params, x = _mlp()
    f = checkify.checkify(jax.jit(mbp.value_and_grad(MLP, SCE, checkify=True)))
    err, _ = f(params, x, jnp.array([0, 1, 2, 1]))
    assert err.get() is None
    err, _ = f(params, x, jnp.array([0, 1, 2, 3]))
    assert "SoftmaxCrossEntropy: labels must lie in [0, 3) for 3 classes, got values in [0, 3]" in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match=LABELS):
        err.throw()
    err, _ = checkify.checkify(jax.jit(mbp.value_and_grad(EMB, SCE, checkify=True)))(_emb(), jnp.array([[0, 9, 1]]),
                                                                         jnp.zeros((1, 3), jnp.int32))
    assert "Embedding: ids must lie in [0, 5)" in err.get()

    def head_loss(z, y, m):
        with mbp.checkify_values():
            return SCE.forward(z, y, m)[0]

    err, _ = checkify.checkify(jax.jit(head_loss))(jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.array([1.0, -1.0]))
    assert "mask entries must be finite and >= 0" in err.get()


def test_value_checks_are_registered_only_when_asked():
    """A registered check is an effect XLA must keep (15% of an MLP step): none in the default trace."""
    params, x = _mlp()
    y = jnp.array([0, 1, 2, 1])
    plain = jax.make_jaxpr(mbp.value_and_grad(MLP, SCE, jit=False, check=False))(params, x, y)
    asked = jax.make_jaxpr(mbp.value_and_grad(MLP, SCE, jit=False, check=False, checkify=True))(params, x, y)
    assert "check[debug=True]" not in str(plain) and "check[debug=True]" in str(asked)
    err, _ = checkify.checkify(jax.jit(mbp.value_and_grad(MLP, SCE)))(params, x, jnp.array([0, 1, 2, 3]))
    assert err.get() is None  # not asked: no error, and the loss is NaN (test above)


def test_heads_take_lists_and_numpy_arrays():
    z = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    expected = SCE.forward(z, jnp.array([0, 1, 3]), jnp.array([1.0, 0.0, 1.0]))[0]
    assert SCE.forward(z, [0, 1, 3], [1, 0, 1])[0] == expected
    assert SCE.forward(z, np.array([0, 1, 3]), np.array([True, False, True]))[0] == expected
    params, x = _mlp()
    loss, _ = mbp.value_and_grad(MLP, SCE)(params, x, [0, 1, 2, 1], [1, 1, 0, 1])
    r_loss, _ = ref.value_and_grad(MLP, SCE)(params, x, [0, 1, 2, 1], [1, 1, 0, 1])
    assert np.isclose(loss, r_loss, rtol=1e-14)
    with pytest.raises(TypeError, match="SoftmaxCrossEntropy: expected labels as an array of numbers, got str"):
        SCE.forward(z, "cat")


@pytest.mark.parametrize("head, labels", [(mbp.SoftmaxCrossEntropy(), jnp.zeros((0,), jnp.int32)),
                                          (mbp.SigmoidBinaryCrossEntropy(), jnp.zeros((0, 3))),
                                          (mbp.MeanSquaredError(), jnp.zeros((0, 3)))], ids=["SCE", "BCE", "MSE"])
def test_a_batch_of_zero_is_an_error(head, labels):
    with pytest.raises(ValueError, match=rf"{head.name}: expected at least one example, got logits of shape \(0, 3\)"):
        head.forward(jnp.zeros((0, 3)), labels)


@pytest.mark.parametrize("bad", [2.0, -1.0, np.nan])
def test_binary_labels_outside_0_1_raise_and_are_nan_under_jit(bad):
    head = mbp.SigmoidBinaryCrossEntropy()
    z = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    y = jnp.array([[0.0, 1.0], [bad, 0.5], [1.0, 1.0]])
    with pytest.raises(ValueError, match=r"SigmoidBinaryCrossEntropy: labels must lie in \[0, 1\], got"):
        head.forward(z, y)
    value, cache = jax.jit(head.forward)(z, y)
    dz = jax.jit(head.backward)(cache)
    dz_ref = jax.grad(lambda z: ref.head_forward(head, z, y))(z)
    assert np.isnan(value) and np.isnan(ref.head_forward(head, z, y))
    for d in (dz, dz_ref):
        assert np.isnan(d[1, 0]) and np.isfinite(np.delete(np.asarray(d).ravel(), 2)).all()


@pytest.mark.parametrize("bad", [-1.0, np.inf, np.nan])
def test_negative_or_non_finite_masks_raise_and_are_nan_under_jit(bad):
    z = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    y = jnp.array([0, 1, 3])
    mask = jnp.array([1.0, bad, 1.0])
    for head, labels in [(SCE, y), (mbp.MeanSquaredError(), z), (mbp.SigmoidBinaryCrossEntropy(), jnp.ones_like(z))]:
        with pytest.raises(ValueError, match=rf"{head.name}: mask entries must be finite and >= 0 \(1 = real, 0 = padding\)"):
            head.forward(z, labels, mask)
        value, _ = jax.jit(head.forward)(z, labels, mask)
        assert np.isnan(value) and np.isnan(ref.head_forward(head, z, labels, mask))
    weights = jnp.array([2.0, 0.0, 0.5])  # any finite weights >= 0 are a mask: the weighted mean
    assert np.isclose(SCE.forward(z, y, weights)[0], ref.head_forward(SCE, z, y, weights), rtol=1e-14)


def test_float_targets_must_be_finite_and_mse_labels_too():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: target rows must be finite, got NaN"):
        SCE.forward(z, jnp.array([[0.5, 0.5, 0.0], [np.nan, 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"MeanSquaredError: labels must be finite, got values in \[0.0, inf\]"):
        mbp.MeanSquaredError().forward(z, jnp.array([[0.0, 1.0, np.inf], [0.0, 0.0, 0.0]]))


# the checkers validate the inputs once, before any verdict, with value_and_grad's messages: a bad input is never
# reported as a failing backward ("non-finite values in manual")
BAD_INPUTS = {
    "label-above": (lambda: (MLP, *_mlp(), jnp.array([3, 1, 2, 1]), None), LABELS + r"\[1, 3\]"),
    "label-minus-1": (lambda: (MLP, *_mlp(), jnp.array([-1, 1, 2, 1]), None), LABELS + r"\[-1, 2\]"),
    "all-zero-mask": (lambda: (MLP, *_mlp(), jnp.array([0, 1, 2, 1]), jnp.zeros(4)),
                      r"SoftmaxCrossEntropy: the mask selects no example \(all zeros\)"),
    "id-equal-to-vocab": (lambda: (EMB, _emb(), jnp.array([[0, 1, 5]]), jnp.zeros((1, 3), jnp.int32), None),
                          r"Embedding: ids must lie in \[0, 5\) \(E has shape \(5, 4\)\), got values in \[0, 5\]"),
    "binary-label-1.5": (lambda: (MLP, *_mlp(), jnp.full((4, 3), 1.5), None),
                         r"SigmoidBinaryCrossEntropy: labels must lie in \[0, 1\], got values in \[1.5, 1.5\]"),
}


@pytest.mark.parametrize("checker", ["compare", "gradcheck", "gradient_flow"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_the_checkers_refuse_a_bad_input_before_any_verdict(case, checker):
    make, match = BAD_INPUTS[case]
    model, params, x, y, mask = make()
    head = mbp.SigmoidBinaryCrossEntropy() if case.startswith("binary") else SCE
    with pytest.raises(ValueError, match=match):
        getattr(mbp, checker)(model, head, params, x, y, mask)
