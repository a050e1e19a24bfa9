"""value_and_grad by hand: forward through the model and head, then backward.

No autodiff anywhere: the gradient is the head's dL/dlogits pushed back
through every layer's hand-written ``backward``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from manualbp.layers.base import check_finite, is_concrete, name_of


def loss_and_grads(model, head, params, x, y, mask=None):
    """(loss, dparams, dx, logits): one manual forward and backward pass, traceable under jit."""
    out, cache = model.forward(params, x)
    loss, head_cache = head.forward(out, y, mask)
    dout = head.backward(head_cache)
    grads, dx = model.backward(params, cache, dout)
    return loss, grads, dx, out


@partial(jax.jit, static_argnums=(0, 1))
def _jitted(model, head, params, x, y, mask):
    loss, grads, _, _ = loss_and_grads(model, head, params, x, y, mask)
    return loss, grads


def value_and_grad(model, head, *, jit: bool = True, check: bool = True):
    """Return ``f(params, x, y, mask=None) -> (loss, grads)`` computed by manual backprop.

    Args:
      model: a layer (usually ``Sequential``).
      head: a loss head (``SoftmaxCrossEntropy``, ...).
      jit: compile the step (once per model/head/shape/dtype).
      check: when called eagerly, raise a ValueError naming the first input
        or parameter gradient holding NaN/Inf (explosion). Skipped when ``f``
        is itself traced by an outer ``jax.jit``.

    ``grads`` has exactly the structure of ``params``, so
    ``optax.GradientTransformation.update`` consumes it unchanged.
    """

    def f(params, x, y, mask=None):
        x, y = jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(y)  # x may be a tuple, e.g. (x, h0)
        if check and is_concrete((params, x)):
            check_finite(name_of(model), "input x", x)
            check_finite(name_of(model), "params", params)
        if jit:
            loss, grads = _jitted(model, head, params, x, y, mask)
        else:
            loss, grads, _, _ = loss_and_grads(model, head, params, x, y, mask)
        if check and is_concrete((loss, grads)):
            check_finite(name_of(model), "loss", loss)
            check_finite(name_of(model), "gradient (exploding gradients? try clipping)", grads)
        return loss, grads

    return f
