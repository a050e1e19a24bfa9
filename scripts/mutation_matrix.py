"""How much is a PASS worth? The mutation matrix: realistic backward bugs against every verdict, and clean models.

For every mutant of ``tests/mutants`` (a real layer or head with one line of its backward wrong):
``compare`` in float64 and float32 (caught? is the first failing row on the mutated layer, with the
expected quantity?), and ``gradcheck`` (float64 central differences along 8 random directions). For the
twin cases of ``tests/mutants/twin.py``: ``train_twin`` for ``--steps`` steps, mutated (must be DIVERGED) and
clean (must PASS). Then the false-failure matrix: every clean model of the catalog and every built-in model
(``manualbp check``) x ``--seeds`` seeds x {float32, float64} through ``compare``, and the clean catalog
models in float64 through ``gradcheck``.

Run: .venv/bin/python scripts/mutation_matrix.py [--seeds 5] [--steps 100] [--json out.json]
Prints one row per mutant, the false failures (if any), and the figures in docs/evidence.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64 compare and finite differences

import jax.numpy as jnp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the catalog lives with the test that asserts it

import mutants  # noqa: E402
from mutants import twin  # noqa: E402
from mutants.catalog import CATALOG  # noqa: E402

import manualbp as mbp  # noqa: E402
from manualbp import models  # noqa: E402

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def judge_mutant(mutant):
    row = {"name": mutant.name, "family": mutant.family, "bug": mutant.bug}
    for dname, dtype in DTYPES.items():
        case = mutants.case(mutant, dtype=dtype)
        verdict = mutants.judge(mutant, case, mutants.run_compare(case))
        row[dname] = {"caught": verdict.caught, "first": verdict.first, "right_row": verdict.right_row,
                      "forward_clean": verdict.forward_clean, "expected": [case.where, mutant.expect]}
    case = mutants.case(mutant)
    report = mbp.gradcheck(case.model, case.head, case.params, case.x, case.y, case.mask)
    row["gradcheck"] = {"outcome": outcome(report), "caught": outcome(report) == "FAIL"}
    return row


def outcome(report) -> str:
    """PASS, FAIL (or INCONCLUSIVE, where gradcheck compared no row): the first word of the report's summary."""
    return report.summary().split(":")[0]


def clean_matrix(seeds):
    """(runs, failures) of compare over the catalog's clean models and the built-ins, and of gradcheck (float64)."""
    runs = {"compare": 0, "builtin": 0, "gradcheck": 0}
    failures = []
    for name, scene, layer in mutants.clean_cases():
        for seed in range(seeds):
            for dname, dtype in DTYPES.items():
                c = mutants.build(scene, layer, dtype, seed)
                report = mutants.run_compare(c)
                runs["compare"] += 1
                if not report.ok:
                    failures.append(("compare", name, dname, seed, report.summary()))
            c = mutants.build(scene, layer, jnp.float64, seed)
            report = mbp.gradcheck(c.model, c.head, c.params, c.x, c.y, c.mask)
            runs["gradcheck"] += 1
            if outcome(report) != "PASS":  # a FAIL is a false failure; an INCONCLUSIVE is listed, not counted
                failures.append(("gradcheck" if outcome(report) == "FAIL" else "inconclusive", name, "float64", seed,
                                 report.summary()))
    for name in models.MODELS:
        b = models.get(name)
        for seed in range(seeds):
            for dname, dtype in DTYPES.items():
                params, _ = b.model.init(jax.random.key(seed), b.input_shape, dtype)
                x, y, mask = b.make_batch(jax.random.key(seed + 1000), 8, dtype)
                report = mbp.compare(b.model, b.head, params, x, y, mask)
                runs["builtin"] += 1
                if not report.ok:
                    failures.append(("builtin", name, dname, seed, report.summary()))
    return runs, failures


def twin_matrix(steps):
    rows = []
    for case in twin.TWIN_CASES:
        bad, good = twin.run(case, mutated=True, steps=steps), twin.run(case, mutated=False, steps=steps)
        rows.append({"name": case.name, "caught": not bad.ok, "first_failure": bad.first_failure, "clean_ok": good.ok})
    return rows


def _first(v):
    return "PASS" if v["first"] is None else f"{v['first'][0]} {v['first'][1]}" + ("" if v["right_row"] else "  (WRONG ROW)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per clean model and dtype")
    parser.add_argument("--steps", type=int, default=100, help="steps per twin run")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    rows = [judge_mutant(m) for m in CATALOG]
    width = max(len(r["name"]) for r in rows)
    print(f"{'mutant':{width}}  {'family':14}  {'float64: first failing row':58}  float32  gradcheck")
    for r in rows:
        f32 = "right" if r["float32"]["right_row"] else "caught" if r["float32"]["caught"] else "MISSED"
        print(f"{r['name']:{width}}  {r['family']:14}  {_first(r['float64']):58}  {f32:7}  "
              f"{'caught' if r['gradcheck']['caught'] else 'missed (' + r['gradcheck']['outcome'] + ')'}")
    twins = twin_matrix(args.steps)
    print()
    for t in twins:
        f = t["first_failure"]
        where = f"step {f['step']}, {f['kind']} of {f['parameter']}" if f else "-"
        print(f"twin {t['name']:{width}}  {'DIVERGED' if t['caught'] else 'PASS (missed)':14}  first failure: {where}; "
              f"clean run {'PASS' if t['clean_ok'] else 'DIVERGED (false failure)'}")
    runs, failures = clean_matrix(args.seeds)
    for f in failures:
        print("false failure:" if f[0] != "inconclusive" else "inconclusive:", *f)

    n = len(rows)
    fig = {
        "mutants": n,
        "caught_float64": sum(r["float64"]["caught"] for r in rows),
        "right_row_float64": sum(r["float64"]["right_row"] for r in rows),
        "caught_float32": sum(r["float32"]["caught"] for r in rows),
        "right_row_float32": sum(r["float32"]["right_row"] for r in rows),
        "forward_clean": sum(r["float64"]["forward_clean"] and r["float32"]["forward_clean"] for r in rows),
        "gradcheck_caught": sum(r["gradcheck"]["caught"] for r in rows),
        "twin_cases": len(twins),
        "twin_caught": sum(t["caught"] for t in twins),
        "twin_false_failures": sum(not t["clean_ok"] for t in twins),
        "clean_runs": runs,
        "false_failures": {k: sum(f[0] == k for f in failures) for k in runs},
        "gradcheck_inconclusive_clean": sum(f[0] == "inconclusive" for f in failures),
        "seeds": args.seeds,
    }
    print()
    print(f"compare, float64: caught {fig['caught_float64']} of {n}; first row right {fig['right_row_float64']} of {n}")
    print(f"compare, float32: caught {fig['caught_float32']} of {n}; first row right {fig['right_row_float32']} of {n}")
    print(f"gradcheck (float64, 8 directions): caught {fig['gradcheck_caught']} of {n}")
    print(f"twin ({args.steps} steps, float64): caught {fig['twin_caught']} of {fig['twin_cases']}; "
          f"clean twin runs DIVERGED {fig['twin_false_failures']} of {fig['twin_cases']}")
    ff, nr = fig["false_failures"], runs
    print(f"gradcheck INCONCLUSIVE on clean catalog models: {fig['gradcheck_inconclusive_clean']} of {nr['gradcheck']}")
    print(f"false failures: compare {ff['compare']} of {nr['compare']} (catalog models x {args.seeds} seeds x "
          f"float32/float64), {ff['builtin']} of {nr['builtin']} (built-in models), gradcheck {ff['gradcheck']} of "
          f"{nr['gradcheck']} (catalog models, float64)")
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"figures": fig, "mutants": rows, "twin": twins,
                                         "false_failures": [list(f) for f in failures]}, indent=1, default=str))


if __name__ == "__main__":
    main()
