"""The autodiff twin of manualbp.

Each layer's forward is written here independently with library ops
(jax.nn, lax.conv_general_dilated, lax.reduce_window, lax.scan,
optax.losses), and every gradient comes from jax.grad / jax.vjp only. This
package reads manualbp layers' hyperparameters (it dispatches on their
types) but never calls their forward or backward: a wrong manual forward
must not agree with itself.
"""

from reference import (  # noqa: F401  (registers the rules)
    activations,
    conv,
    dense,
    embedding,
    losses,
    nodes,
    norm,
    pool,
    recurrent,
    reshape,
    residual,
    sequential,
)
from reference.backprop import trace, value_and_grad, vjp_layer
from reference.layer import Taps, apply, forward, head_forward

__all__ = ["Taps", "apply", "forward", "head_forward", "trace", "value_and_grad", "vjp_layer"]
