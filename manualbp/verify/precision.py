"""Matrix products at the precision of their dtype while a checker runs (``full_precision``).

By default XLA may compute float32 matrix products and convolutions below float32: TF32 (10
mantissa bits) on NVIDIA GPUs since Ampere, bfloat16 passes on TPUs. Which products it lowers
depends on the op's form, so a hand-written backward and jax.grad's are not lowered alike. On an
H100 (jax 0.11.2) a Conv2D's hand-written dW came out 3e-4 off the float64 truth while
jax.grad's was 8e-8 off: a false FAIL against float32's tolerance of 1e-5, for a correct layer.

A checker judges a derivation at the precision its dtype names, so ``compare``, ``check_layer``,
``check_vjp``, ``gradcheck`` and ``train_twin`` trace their programs under
``jax.default_matmul_precision("highest")`` (float32 products in float32; nothing changes on a
CPU, which has no lower mode). A precision the user set (the ``jax_default_matmul_precision``
option, or the context manager around the call) is left as it is: the checker then judges that
mode, and its tolerances are float32's.
"""

from __future__ import annotations

import functools

import jax


def full_precision(fn):
    """``fn`` run under ``jax.default_matmul_precision("highest")`` unless a precision is already set."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapped
