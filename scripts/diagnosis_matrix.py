"""How often a FAIL's diagnosis names the right kind of bug: every mutant of the catalog, compare in float64.

Each mutant of ``tests/mutants`` carries the kind of bug it is (``catalog.KIND``, decided from the bug alone);
this script runs ``compare`` on it and reads the diagnosis of the first failing row. Prints one row per mutant,
the misses, the figure per kind, the time a diagnosis takes against the comparison's, and writes JSON.

Run: .venv/bin/python scripts/diagnosis_matrix.py [--json docs/img/diagnosis_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the catalog lives with the test that asserts it

import mutants  # noqa: E402
from mutants.catalog import CATALOG, KIND  # noqa: E402

STRICT = ("scale", "sign", "rearranged")  # kinds a diagnosis must never miss


def run() -> dict:
    rows = []
    for mt in CATALOG:
        case = mutants.case(mt)
        start = time.perf_counter()
        report = mutants.run_compare(case)  # includes the first failure's diagnosis
        total = time.perf_counter() - start
        fail = report.first_failure
        start = time.perf_counter()
        again = mutants.diagnosis_of(report)  # the same diagnosis recomputed: its own cost
        cost = time.perf_counter() - start
        rows.append({"name": mt.name, "expected": KIND[mt.name], "got": again.kind, "text": again.text,
                     "row": [fail.layer, fail.quantity], "right": again.kind == KIND[mt.name],
                     "compare_s": total, "diagnosis_s": cost})
        print(f"{'ok  ' if rows[-1]['right'] else 'MISS'} {mt.name:34s} {KIND[mt.name]:18s} -> {again.kind:18s} "
              f"{again.text[:90]}")
    kinds = sorted({r["expected"] for r in rows})
    per_kind = {k: [sum(r["right"] for r in rows if r["expected"] == k), sum(r["expected"] == k for r in rows)]
                for k in kinds}
    right = sum(r["right"] for r in rows)
    figures = {"mutants": len(rows), "right": right, "per_kind": per_kind,
               "strict_right": all(r["right"] for r in rows if r["expected"] in STRICT),
               "misses": [{k: r[k] for k in ("name", "expected", "got", "text")} for r in rows if not r["right"]],
               "diagnosis_s_max": max(r["diagnosis_s"] for r in rows),
               "diagnosis_over_compare_max": max(r["diagnosis_s"] / r["compare_s"] for r in rows), "rows": rows}
    print(f"\nthe diagnosis names the right kind for {right} of {len(rows)} mutants")
    for k, (n, m) in per_kind.items():
        print(f"  {k:18s} {n} of {m}")
    print(f"a diagnosis took at most {figures['diagnosis_s_max']:.3f} s, at most "
          f"{figures['diagnosis_over_compare_max']:.2f} of its comparison's time")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    figures = run()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
