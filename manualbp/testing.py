"""One line in a test suite: ``assert_vjp(fn, reference, *args, **options)`` passes or raises with the report.

Example (pytest)::

    from manualbp.testing import assert_vjp

    def test_my_layer_norm_rule():
        assert_vjp(my_layer_norm, None, x, gamma)          # no reference: finite differences + Taylor test
        assert_vjp(my_flash_attention, reference_attention, q, k, v, kwargs={"causal": True})
"""

from __future__ import annotations

from manualbp.verify.check_vjp import check_vjp
from manualbp.verify.report import Report

__all__ = ["assert_vjp"]


def assert_vjp(fn, reference=None, *args, **options) -> Report:
    """``check_vjp(fn, reference, *args, **options).raise_if_failed()``: the report if it PASSes, else an
    ``AssertionError`` whose message is the whole table (a FAIL with its diagnosis, or an INCONCLUSIVE check that
    compared nothing). Same arguments as ``manualbp.check_vjp``."""
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    return check_vjp(fn, reference, *args, **options).raise_if_failed()
