"""check_vjp with no reference, on hand-written rules: bugs caught in their own row, and no false failures.

For every kernel of ``tests/user_kernels.py`` (layer norm, RMS norm, softmax cross-entropy, swish, a chunked
FlashAttention-2 backward) x {float32, float64} x ``--seeds`` seeds: ``check_vjp(kernel, None, ...)`` (finite
differences of the kernel's own forward in float64 and the Taylor test, 2 random directions per input) must PASS
the kernel as written, and FAIL each planted bug (a sign, a forgotten term, a scale, a missing cotangent) with its
first failing row on the input the bug is in and that input's Taylor row failing too.

Run: .venv/bin/python scripts/check_vjp_matrix.py [--seeds 6] [--json out.json]
Prints one line per (kernel, bug) and the counts quoted in docs/evidence.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64 inputs; float32 ones stay float32

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the catalog lives with the test that asserts it

from user_kernels import CATALOG  # noqa: E402

import manualbp as mbp  # noqa: E402

DTYPES = {"float32": np.float32, "float64": np.float64}


def outcome(spec, bug, dtype, seed) -> dict:
    args = spec.args(np.random.default_rng(seed), DTYPES[dtype])
    report = mbp.check_vjp(spec.make(bug), None, *args, k=2, seed=seed, jit=True)
    first = report.first_failure
    failing = sorted(r.quantity for r in report.rows if r.compared and not r.ok)
    if bug is None:
        right = report.status == "PASS"
    else:
        want = spec.bugs[bug][1]
        right = report.status == "FAIL" and first.quantity == want and f"{want} taylor" in failing
    return {"kernel": spec.name, "bug": bug, "kind": spec.bugs[bug][0] if bug else None, "dtype": dtype,
            "seed": seed, "status": report.status, "first": first.quantity if first else None, "failing": failing,
            "right": right, "diagnosis": str(first.diagnosis) if first is not None and first.diagnosis else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for spec in CATALOG:
        for bug in (None, *spec.bugs):
            runs = [outcome(spec, bug, d, s) for d in DTYPES for s in range(args.seeds)]
            results += runs
            wrong = [f"{r['dtype']}/seed {r['seed']}: {r['status']} first {r['first']}" for r in runs if not r["right"]]
            label = "as written" if bug is None else f"{bug} ({spec.bugs[bug][0]}, on {spec.bugs[bug][1]})"
            print(f"{spec.name:22s} {label:48s} {len(runs) - len(wrong)}/{len(runs)} right"
                  + (f"  WRONG: {'; '.join(wrong)}" if wrong else ""), flush=True)
    clean = [r for r in results if r["bug"] is None]
    buggy = [r for r in results if r["bug"] is not None]
    print(f"\nkernels as written: {sum(r['status'] == 'PASS' for r in clean)} of {len(clean)} PASS "
          f"({len(CATALOG)} kernels x {len(DTYPES)} dtypes x {args.seeds} seeds)")
    print(f"planted bugs: {sum(r['status'] == 'FAIL' for r in buggy)} of {len(buggy)} FAIL, "
          f"{sum(r['right'] for r in buggy)} of {len(buggy)} with the first failing row on the bug's input and its "
          f"Taylor row failing ({len(buggy) // (len(DTYPES) * args.seeds)} bugs x {len(DTYPES)} dtypes x "
          f"{args.seeds} seeds)")
    for kind in sorted({r["kind"] for r in buggy}):
        of = [r for r in buggy if r["kind"] == kind]
        print(f"  {kind}: {sum(r['right'] for r in of)} of {len(of)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all(r["right"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
