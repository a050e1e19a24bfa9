"""Verification: manual backprop against jax.grad of the reference (``compare``, ``check_layer``), against
finite differences (``gradcheck``), the report, the verdict of each row and its tolerances, and gradient-flow
diagnostics; and any user's hand-written VJP against jax.vjp of their own reference (``check_vjp``).

``quantities`` lines up what the two sides computed, in the order the pass computes it; ``verdict.judge``
turns one pair (with jax.grad's own error where measured, ``rounding``) into a report row; ``report``
holds the rows and the status (PASS / FAIL / INCONCLUSIVE); ``finite_differences`` estimates a
directional derivative and its error across kinks. ``compare`` and ``check_layer`` are the manual
modules that call the reference; ``check_vjp`` calls ``jax.vjp`` on the user's functions only;
everything else here runs the manual engine only.
"""
