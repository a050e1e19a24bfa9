"""Per-example gradients: jax.vmap over mbp.value_and_grad, one example as a batch of one, equals the loop."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify.verdict import judge


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vmap_over_value_and_grad_equals_a_loop_and_the_reference(jit):
    model = mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(3))
    head = mbp.SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (3, 4), jnp.float64)
    y = jnp.array([0, 2, 1])
    vg = mbp.value_and_grad(model, head, jit=jit)

    def per_example(vg):  # vmap strips the batch axis: give each example back as a batch of one
        return jax.vmap(lambda x, y: vg(params, x[None], y[None]))(x, y)

    losses, grads = per_example(vg)
    losses_r, grads_r = per_example(ref.value_and_grad(model, head))
    tol = mbp.tolerance(jnp.float64)
    one_at_a_time = mbp.value_and_grad(model, head)  # the loop, jitted whatever path vmap took
    assert losses.shape == (3,) and jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for n in range(3):
        loss_n, grads_n = one_at_a_time(params, x[n : n + 1], y[n : n + 1])
        assert judge("model", "loss", losses[n], loss_n, tol).ok
        assert judge("model", "loss vs reference", losses[n], losses_r[n], tol).ok
        for (path, g), want, want_r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads_n),
                                           jax.tree_util.tree_leaves(grads_r)):
            assert judge("model", jax.tree_util.keystr(path), g[n], want, tol).ok
            assert judge("model", jax.tree_util.keystr(path), g[n], want_r[n], tol).ok
    # the loss is a mean over the batch, so the batch gradient is the mean of the per-example ones
    _, batch = one_at_a_time(params, x, y)
    for g, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(batch)):
        assert judge("model", "mean", jnp.mean(g, axis=0), b, tol).ok
