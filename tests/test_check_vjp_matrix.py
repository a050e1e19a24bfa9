"""check_vjp with no reference on the catalog of hand-written rules (tests/user_kernels.py): every kernel as written
PASSES in float32 and float64, every planted bug (a sign, a forgotten term, a scale, a missing cotangent) FAILS
with the first failing row on the input the bug is in, its Taylor row measuring a wrong rate too.

One seed per case here; ``scripts/check_vjp_matrix.py --seeds 6`` runs the same catalog over more seeds.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from user_kernels import CATALOG, kernel

import manualbp as mbp

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
CLEAN = [(k.name, d) for k in CATALOG for d in DTYPES]
# each bug in one dtype (alternating), at a seed of its own; the script runs every bug in both at every seed
BUGGY = [(k.name, bug, list(DTYPES)[i % 2], i) for k in CATALOG for i, bug in enumerate(k.bugs)]


def check(name, bug, dtype, seed):
    spec = {k.name: k for k in CATALOG}[name]
    args = spec.args(np.random.default_rng(seed), DTYPES[dtype])
    return mbp.check_vjp(kernel(name, bug), None, *args, k=2, seed=seed, jit=True)


@pytest.mark.parametrize("name, dtype", CLEAN)
def test_a_kernel_as_written_passes_with_no_reference(name, dtype):
    report = check(name, None, dtype, seed=3)
    assert report.status == "PASS", report
    taylor = [r for r in report.rows if r.quantity.endswith(" taylor") and r.compared]
    assert taylor, report  # at least one input's derivative was measured to converge at rate 2, not only compared


@pytest.mark.parametrize("name, bug, dtype, seed", BUGGY)
def test_a_planted_bug_fails_on_its_own_input(name, bug, dtype, seed):
    want = {k.name: k for k in CATALOG}[name].bugs[bug][1]
    report = check(name, bug, dtype, seed)
    first = report.first_failure
    assert report.status == "FAIL" and first.quantity == want, report
    failing = {r.quantity for r in report.rows if r.compared and not r.ok}
    assert f"{want} taylor" in failing, report  # the Taylor test sees the same bug with no step size to tune
    assert first.diagnosis is not None and first.diagnosis.worst, report  # (index, got, want) of the worst entries
    assert all(math.isfinite(r.norm_rel) for r in report.rows if r.compared), report  # a zero rule is 100% off, not inf
