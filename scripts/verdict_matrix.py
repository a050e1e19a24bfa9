"""False failures of the verdicts: correct models x dtypes x seeds, compare and gradcheck.

A verdict is worth what its two error rates are. This script measures the false-failure side on
code that is correct (the mutation test measures the other side):

1. ``compare`` on every built-in model (``manualbp.models.MODELS``) x {bfloat16, float16, float32,
   float64} x seeds with the default verdict of each dtype (error model below float32,
   conditioning above), and float32 with the error model as well (its option);
2. ``compare`` on the ill-conditioned cases of issue 14 (a bias right before BatchNorm, BatchNorm
   over a batch of 2 at input scales 1 to 100, LayerNorm over 2 features), float32 and float64;
3. ``gradcheck`` (directions, k = 8) on a zoo of correct models (activations, LSTM, RNN, a
   Multiply node, residual + LayerNorm, a CNN with max and average pooling, BatchNorm) x seeds;
4. saturated inputs (issue 30): ``compare`` on every clean model of the mutation catalog
   (``tests/mutants``: one per layer family and head) with its float inputs multiplied by 1, 5 and 30
   (at 30 sigmoids, tanh, softmax and attention saturate), float32 and float64 x ``--saturated-seeds``,
   and issue 30's own model, Dense(8) -> Softmax -> Dense(3) on inputs of scale 30, x ``--issue-seeds``.

For each group it prints the number of reports that FAIL, how many rows were decided by a
rounding-aware rule, and the largest fraction of its allowance any row used ("used": a row
passes at <= 1). Writes verdict_matrix.json and verdict_matrix.png (the distribution of "used").

Run: .venv/bin/python scripts/verdict_matrix.py [--seeds 20] [--gradcheck-seeds 20] [--saturated-seeds 5]
[--issue-seeds 120] [--groups builtin,ill,gradcheck,saturated] [--out docs/img/]
(gradcheck is the slow part: ~15 s per run on a shared 2-core machine.) A run of some groups only writes
verdict_matrix_<groups>.json, so that it does not replace the full run's figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

jax.config.update("jax_enable_x64", True)

import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the mutation catalog's clean models

import manualbp as mbp  # noqa: E402
from manualbp.models import MODELS, get  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HEAD = mbp.SoftmaxCrossEntropy()


def builtin_point(name, dtype, seed, batch=4):
    """A built-in model's params and batch: initialized in float32 and rounded to ``dtype`` (as ``manualbp check``)."""
    b = get(name)
    kp, kb = jax.random.split(jax.random.fold_in(jax.random.key(seed), 14))
    params, _ = b.model.init(kp, b.input_shape, jnp.float32)
    x, y, mask = b.make_batch(kb, batch, jnp.float32)
    cast = lambda t: jax.tree_util.tree_map(lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, t)  # noqa: E731
    return b.model, b.head, cast(params), cast(x), y, cast(mask)


def ill_conditioned():
    """(name, model, batch, input scale): issue 14's false FAILs in float64."""
    bn = mbp.Sequential(mbp.Dense(6, use_bias=False), mbp.BatchNorm(), mbp.Dense(3))
    return [("Dense(bias) -> BatchNorm, batch 8", mbp.Sequential(mbp.Dense(6), mbp.BatchNorm(), mbp.Dense(3)), 8, 1.0),
            *[(f"BatchNorm, batch 2, x scale {s:g}", bn, 2, s) for s in (1.0, 10.0, 100.0)],
            ("LayerNorm over 2 features, x scale 10", mbp.Sequential(mbp.Dense(2, use_bias=False), mbp.LayerNorm(),
                                                                      mbp.Dense(3)), 4, 10.0)]


def gradcheck_zoo():
    """(name, model, input shape, x maker): correct models for finite differences (float64)."""
    acts = mbp.Sequential(mbp.Dense(6), mbp.Sigmoid(), mbp.Dense(6), mbp.Tanh(), mbp.Dense(6), mbp.Softplus(),
                          mbp.Dense(6), mbp.GELU(), mbp.Dense(6), mbp.GELU(approximate=False), mbp.Dense(6),
                          mbp.LeakyReLU(0.1), mbp.Dense(6), mbp.ReLU(), mbp.Dense(3))
    mult = mbp.Sequential(mbp.Dense(6), mbp.Parallel(mbp.Sequential(mbp.Dense(6), mbp.Tanh()), mbp.Dense(6)),
                          mbp.Multiply(), mbp.Dense(3))
    return [
        ("activation zoo", acts, (5,)),
        ("Multiply node", mult, (5,)),
        ("LSTM", mbp.Sequential(mbp.LSTM(6, return_sequences=False), mbp.Dense(3)), (4, 3)),
        ("RNN", mbp.Sequential(mbp.RNN(6, return_sequences=False), mbp.Dense(3)), (4, 3)),
        ("Residual + LayerNorm", mbp.Sequential(mbp.Dense(6), mbp.Residual(mbp.Sequential(mbp.LayerNorm(), mbp.Dense(6),
                                                                                          mbp.Tanh())), mbp.Dense(3)), (5,)),
        ("BatchNorm", mbp.Sequential(mbp.Dense(6, use_bias=False), mbp.BatchNorm(), mbp.Tanh(), mbp.Dense(3)), (5,)),
        ("CNN, max and avg pooling", mbp.Sequential(mbp.Conv2D(3, 3, padding="SAME"), mbp.ReLU(), mbp.MaxPool2D(2),
                                                    mbp.AvgPool2D(2), mbp.Flatten(), mbp.Dense(3)), (4, 4, 1)),
        ("MLP, mean squared error", mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(3)), (5,)),
    ]


SATURATED_SCALES = (1.0, 5.0, 30.0)


def _scaled(x, scale):
    """Every float leaf of the input times ``scale`` (ids, lengths and masks unchanged)."""
    return jax.tree_util.tree_map(lambda v: v * scale if v is not None and jnp.issubdtype(jnp.asarray(v).dtype,
                                                                                          jnp.floating) else v, x)


def who_is_right(model, head, params, x, y, mask=None):
    """(manual's, jax.grad's) largest normwise error over the parameter gradients, against a 50+ digit truth."""
    from manualbp import reference as ref
    from manualbp.verify import highprec

    with jax.enable_x64(True):
        _, gm = jax.jit(mbp.value_and_grad(model, head))(params, x, y, mask)
        _, gj = jax.jit(ref.value_and_grad(model, head))(params, x, y, mask)
        host = jax.tree_util.tree_map(np.asarray, (params, x, y, mask))
        _, gt = highprec.truth(lambda p, x, y, m: ref.value_and_grad(model, head)(p, x, y, m), *host)

    def worst(g):
        return max(float(np.linalg.norm(np.asarray(a, np.float64) - t) / np.linalg.norm(t))
                   for a, t in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(gt)) if np.any(t))

    return worst(gm), worst(gj)


def _judged(model, head, params, x, y, mask=None):
    """compare's report; a failing one's title says who is closer to the truth (``who_is_right``)."""
    report = mbp.compare(model, head, params, x, y, mask)
    if not report.ok:
        m, j = who_is_right(model, head, params, x, y, mask)
        report.title += f" [truth: manual's error {m:.1e}, jax.grad's {j:.1e}]"
    return report


def saturated(seeds, issue_seeds):
    """{group: reports}: the catalog's clean models at input scales 1, 5, 30 x float32/64, and issue 30's model."""
    import mutants

    out = {}
    for name, scene, layer in mutants.clean_cases():
        for scale in SATURATED_SCALES:
            for dname in ("float32", "float64"):
                reports = []
                for seed in range(seeds):
                    c = mutants.build(scene, layer, jnp.dtype(dname), seed)
                    reports.append(_judged(c.model, c.head, c.params, _scaled(c.x, scale), c.y, c.mask))
                out[f"saturated {name} x{scale:g} {dname}"] = reports
    model = mbp.Sequential(mbp.Dense(8), mbp.Softmax(), mbp.Dense(3))
    for dname in ("float32", "float64"):
        reports = []
        for seed in range(issue_seeds):
            params, _ = model.init(jax.random.key(seed), (4,), jnp.dtype(dname))
            rng = np.random.default_rng(seed)
            x = jnp.asarray((30 * rng.standard_normal((4, 4))).astype(dname))
            reports.append(_judged(model, HEAD, params, x, jnp.asarray(rng.integers(0, 3, (4,)))))
        out[f"saturated issue 30: Dense(8) -> Softmax -> Dense(3), x30 {dname}"] = reports
    return out


def summarize(reports):
    """Reports not passing, and per rule (fixed, conditioning, error model, finite difference): rows, worst "used"."""
    rules, used = {}, []
    for rep in reports:
        for r in rep.rows:
            if r.compared and r.used is not None and np.isfinite(r.used):
                n, worst = rules.get(r.rule, (0, 0.0))
                rules[r.rule] = (n + 1, max(worst, r.used))
                if r.rule != "fixed" or rep.verdict == "fixed":  # a fixed pass in "conditioning" has a second chance
                    used.append(r.used)
    fails = [f"{rep.title}: {rep.summary()}" for rep in reports if rep.status != "PASS"]
    return {"reports": len(reports), "not_pass": len(fails), "rules": {k: {"rows": n, "worst_used": w} for k, (n, w) in
                                                                     rules.items()}, "failures": fails[:5]}, used


def run(seeds: int, gradcheck_seeds: int, saturated_seeds: int = 5, issue_seeds: int = 120,
        which=("builtin", "ill", "gradcheck", "saturated")):
    groups, used_by = {}, {}
    t0 = time.time()
    compare_runs = [("bfloat16", "auto"), ("float16", "auto"), ("float32", "auto"), ("float32", "error-model"),
                    ("float64", "auto")]
    for dtype, verdict in compare_runs if "builtin" in which else []:
        for name in sorted(MODELS):
            reports = []
            for seed in range(seeds):
                model, head, params, x, y, mask = builtin_point(name, jnp.dtype(dtype), seed)
                reports.append(mbp.compare(model, head, params, x, y, mask, verdict=verdict))
            key = f"compare {name} {dtype} ({reports[0].verdict})"
            groups[key], used_by[key] = summarize(reports)
            print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    for title, model, batch, scale in ill_conditioned() if "ill" in which else []:
        for dtype in ("float32", "float64"):
            reports = []
            for seed in range(seeds):
                params, _ = model.init(jax.random.key(seed), (5,), jnp.dtype(dtype))
                x = scale * jax.random.normal(jax.random.key(1000 + seed), (batch, 5), jnp.dtype(dtype))
                reports.append(mbp.compare(model, HEAD, params, x, jnp.arange(batch) % 3))
            key = f"compare {title} {dtype}"
            groups[key], used_by[key] = summarize(reports)
            print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    for title, model, shape in gradcheck_zoo() if "gradcheck" in which else []:
        reports = []
        for seed in range(gradcheck_seeds):
            params, _ = model.init(jax.random.key(seed), shape, jnp.float64)
            x = jax.random.normal(jax.random.key(2000 + seed), (4, *shape), jnp.float64)
            if title.startswith("MLP"):
                head, y = mbp.MeanSquaredError(), jax.random.normal(jax.random.key(3000 + seed), (4, 3), jnp.float64)
            else:
                head, y = HEAD, jnp.arange(4) % 3
            reports.append(mbp.gradcheck(model, head, params, x, y, k=8, key=jax.random.key(seed)))
        key = f"gradcheck {title}"
        groups[key], used_by[key] = summarize(reports)
        print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    if "saturated" in which:
        for key, reports in saturated(saturated_seeds, issue_seeds).items():
            groups[key], used_by[key] = summarize(reports)
            print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    return groups, used_by


def _line(g):
    rules = ", ".join(f"{k}: {v['rows']} rows, worst used {v['worst_used']:.2f}" for k, v in sorted(g["rules"].items()))
    return f"{g['not_pass']:3d} of {g['reports']} not PASS; {rules}"


def plot(used_by, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, prefix in [("compare, bfloat16/float16 (error model)", ("bfloat16", "float16")),
                          ("compare, float32/float64 (conditioning)", ("float32 (conditioning", "float64 (cond")),
                          ("compare, ill-conditioned cases", ("BatchNorm", "LayerNorm")),
                          ("gradcheck (finite differences)", ("gradcheck",))]:
        vals = [u for k, us in used_by.items() if any(p in k for p in prefix) for u in us if u > 0]
        if vals:
            ax.hist(np.log10(vals), bins=60, histtype="step", label=f"{label}: max {max(vals):.2f}")
    ax.axvline(0, color="r", ls=":", label="allowance (a row fails beyond it)")
    ax.set_xlabel("log10(fraction of its allowance a correct row used)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.set_title("Correct models: how close every row came to failing")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--gradcheck-seeds", type=int, default=None, help="seeds of the gradcheck zoo (default: --seeds)")
    parser.add_argument("--saturated-seeds", type=int, default=5, help="seeds per clean model, scale and dtype")
    parser.add_argument("--issue-seeds", type=int, default=120, help="seeds of issue 30's model per dtype")
    parser.add_argument("--groups", default="builtin,ill,gradcheck,saturated")
    parser.add_argument("--out", default="docs/img/")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gradcheck_seeds = args.seeds if args.gradcheck_seeds is None else args.gradcheck_seeds
    which = tuple(args.groups.split(","))
    groups, used_by = run(args.seeds, gradcheck_seeds, args.saturated_seeds, args.issue_seeds, which)
    total = sum(g["not_pass"] for g in groups.values())
    print(f"false failures: {total} of {sum(g['reports'] for g in groups.values())} reports")
    sat = [g for k, g in groups.items() if k.startswith("saturated")]
    if sat:
        print(f"saturated inputs: {sum(g['not_pass'] for g in sat)} of {sum(g['reports'] for g in sat)} reports not PASS")
    figures = {"seeds": args.seeds, "gradcheck_seeds": gradcheck_seeds, "saturated_seeds": args.saturated_seeds,
               "issue_seeds": args.issue_seeds, "groups_run": list(which), "false_failures": total, "groups": groups}
    full = set(which) == {"builtin", "ill", "gradcheck", "saturated"}
    name = "verdict_matrix" if full else "verdict_matrix_" + "_".join(which)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=1))
    if full:
        plot(used_by, out / "verdict_matrix.png")


if __name__ == "__main__":
    main()
