"""Test configuration: float64 available, no silent rank promotion (a mis-broadcast bias fails loudly)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
