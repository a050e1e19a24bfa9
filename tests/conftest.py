"""Test configuration: float64 available, no silent rank promotion (a mis-broadcast bias fails loudly).

The suite is dominated by XLA compile time (many small configurations, each
compiled once), so tests ask XLA's CPU backend for its cheapest optimization
level. That changes how long compiling takes, not what is computed: no test
tolerance depends on it.
"""

import os
import sys

if "jax" not in sys.modules:  # only effective before jax starts its backend
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# `manualbp check` keeps compiled programs in a persistent cache in the user's cache dir; the suite must not write there
os.environ.setdefault("MANUALBP_CACHE_DIR", "")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
