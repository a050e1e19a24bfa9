"""Models whose input is a tuple (an RNN given its initial state) go through compare, gradcheck, value_and_grad."""


import jax
import jax.numpy as jnp

import manualbp as mbp


def test_rnn_with_given_state_through_the_whole_toolchain():
    model = mbp.Sequential(mbp.RNN(5, return_sequences=False, initial_state="given"), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), ((4, 2), (5,)), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (3, 4, 2), jnp.float64)
    h0 = jax.random.normal(jax.random.key(2), (3, 5), jnp.float64)
    y = jnp.array([0, 1, 2])
    head = mbp.SoftmaxCrossEntropy()
    report = mbp.compare(model, head, params, (x, h0), y)
    assert report.ok, str(report)
    assert report.row("model Sequential", "dL/dx.1").shape == (3, 5)  # the gradient reaching h0
    assert mbp.gradcheck(model, head, params, (x, h0), y, k=2).ok
    loss, grads = mbp.value_and_grad(model, head)(params, (x, h0), y)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
