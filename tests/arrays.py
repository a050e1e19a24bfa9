"""Test data made on the host and put on the device as it is: ``host(a, dtype)``.

In jax 0.10, ``jnp.asarray(a, dtype)`` of a NumPy array compiles a small XLA program for every new shape
and dtype (a conversion; ``jnp.asarray(a)``: a copy, ``lax.stage``), about 20 ms each on a CPU core, and the
suite makes thousands of inputs. NumPy converts (round to nearest, as XLA) and ``jax.device_put`` transfers
the array, compiling nothing.
"""

import jax
import numpy as np


def host(a, dtype=None):
    """``jnp.asarray(a, dtype)``, converted by NumPy and transferred: the same array, nothing compiled."""
    return jax.device_put(np.asarray(a, dtype))


def normal(seed, shape, dtype=np.float64):
    """Standard normal values of ``shape`` from NumPy's generator seeded by ``seed``, made on the host."""
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


# A layer's check compiled in both precisions, and run eagerly (op by op, no fusion) in float32 only: float32's
# rounding differs between the two runs, float64's agrees with the compiled run to far below every tolerance, so an
# eager float64 run repeats the compiled one. Pass to ``pytest.mark.parametrize("dtype, jit", RUNS, ids=RUN_IDS)``.
RUNS = [(np.float32, True), (np.float64, True), (np.float32, False)]
RUN_IDS = ["float32-jit", "float64-jit", "float32-eager"]


def eager_in_float32_only(configs, dtype_of):
    """(config, jit) pairs: every config compiled, the float32 ones also eagerly (see ``RUNS``)."""
    return [(c, True) for c in configs] + [(c, False) for c in configs if np.dtype(dtype_of(c)) == np.float32]


def one_device_mesh():
    """A 1 x 1 mesh with the tensor-parallel layers' axes ("batch", "model"): every collective is the identity."""
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))
