"""The autodiff twin of manualbp.

Each layer's forward is written here independently with library ops
(jax.nn, lax.conv_general_dilated, lax.reduce_window, lax.scan,
optax.losses), and every gradient comes from jax.grad / jax.vjp only. The
files mirror ``manualbp/layers/`` one for one; ``dispatch`` holds the
per-type dispatch and the zero taps, ``grad`` the jax.grad entry points.
This package reads manualbp layers' hyperparameters (it dispatches on their
types) but never calls their forward or backward: a wrong manual forward
must not agree with itself.

Installed, this folder is the package ``manualbp.reference`` (``from manualbp
import reference as ref``): a name that a user's own ``reference.py`` cannot
shadow. Imported as ``reference`` from the repository's root (scripts, tests),
it hands back that same module, so both names share one registry of rules.
"""

import sys

if __name__ == "reference":  # from the repo's root: be the installed twin itself, not a second copy of it
    import manualbp.reference

    sys.modules[__name__] = manualbp.reference
else:
    from . import (  # noqa: F401  (registers the rules)
        activations,
        attention,
        bidirectional,
        conv,
        conv1d,
        conv_transpose,
        dense,
        dropout,
        embedding,
        fsdp,
        global_pool,
        gru,
        heads,
        lstm,
        nodes,
        norm,
        parallel_attention,
        pool,
        positional,
        recurrent_base,
        reshape,
        residual,
        rnn,
        sequential,
        softmax,
        tensor_parallel,
        transformer,
    )
    from .dispatch import NoTaps, Taps, apply, forward, forward_eval, head_forward
    from .grad import loss_grads_outputs, trace, value_and_grad, vjp_layer

    __all__ = ["NoTaps", "Taps", "apply", "forward", "forward_eval", "head_forward", "loss_grads_outputs", "trace",
               "value_and_grad", "vjp_layer"]
