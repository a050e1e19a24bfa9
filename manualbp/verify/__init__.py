"""Verification: manual backprop against jax.grad of the reference (``compare``, ``check_layer``), against
finite differences (``gradcheck``), the report and its tolerances, and gradient-flow diagnostics; and any
user's hand-written VJP against jax.vjp of their own reference (``check_vjp``).

``compare`` and ``check_layer`` are the manual modules that call the reference; ``check_vjp`` calls
``jax.vjp`` on the user's functions only; everything else here runs the manual engine only.
"""
