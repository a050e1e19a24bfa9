"""Verification: manual backprop against jax.grad of the reference (``compare``, ``check_layer``), against
finite differences (``gradcheck``), the report and its tolerances, and gradient-flow diagnostics.

``compare`` is the manual module that calls the reference; everything else here runs the manual
engine only.
"""
