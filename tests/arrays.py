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
