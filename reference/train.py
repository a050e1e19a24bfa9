"""The reference half of a training step: loss, gradients (from jax.value_and_grad) and the model's outputs."""

from __future__ import annotations

import jax

from reference.layer import apply, head_forward


def loss_grads_outputs(model, head, params, x, y, mask=None):
    """(loss, dL/dparams, outputs) of the reference forward; traceable under jit.

    The outputs come out of the same forward as the gradient (``has_aux``), so
    a training step's accuracy costs no second forward.
    """

    def loss_fn(p):
        out = apply(model, p, x)
        return head_forward(head, out, y, mask), out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, out
