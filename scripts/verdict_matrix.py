"""False failures of the verdicts: correct models x dtypes x seeds, compare and gradcheck.

A verdict is worth what its two error rates are. This script measures the false-failure side on
code that is correct (the mutation test measures the other side):

1. ``compare`` on every built-in model (``manualbp.models.MODELS``) x {bfloat16, float16, float32,
   float64} x seeds with the default verdict of each dtype (error model below float32,
   conditioning above), and float32 with the error model as well (its option);
2. ``compare`` on the ill-conditioned cases of issue 14 (a bias right before BatchNorm, BatchNorm
   over a batch of 2 at input scales 1 to 100, LayerNorm over 2 features), float32 and float64;
3. ``gradcheck`` (directions, k = 8) on a zoo of correct models (activations, LSTM, RNN, a
   Multiply node, residual + LayerNorm, a CNN with max and average pooling, BatchNorm) x seeds.

For each group it prints the number of reports that FAIL, how many rows were decided by a
rounding-aware rule, and the largest fraction of its allowance any row used ("used": a row
passes at <= 1). Writes verdict_matrix.json and verdict_matrix.png (the distribution of "used").

Run: .venv/bin/python scripts/verdict_matrix.py [--seeds 20] [--gradcheck-seeds 20] [--out docs/img/]
(gradcheck is the slow part: ~15 s per run on a shared 2-core machine.)
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


def run(seeds: int, gradcheck_seeds: int):
    groups, used_by = {}, {}
    t0 = time.time()
    for dtype, verdict in [("bfloat16", "auto"), ("float16", "auto"), ("float32", "auto"), ("float32", "error-model"),
                           ("float64", "auto")]:
        for name in sorted(MODELS):
            reports = []
            for seed in range(seeds):
                model, head, params, x, y, mask = builtin_point(name, jnp.dtype(dtype), seed)
                reports.append(mbp.compare(model, head, params, x, y, mask, verdict=verdict))
            key = f"compare {name} {dtype} ({reports[0].verdict})"
            groups[key], used_by[key] = summarize(reports)
            print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    for title, model, batch, scale in ill_conditioned():
        for dtype in ("float32", "float64"):
            reports = []
            for seed in range(seeds):
                params, _ = model.init(jax.random.key(seed), (5,), jnp.dtype(dtype))
                x = scale * jax.random.normal(jax.random.key(1000 + seed), (batch, 5), jnp.dtype(dtype))
                reports.append(mbp.compare(model, HEAD, params, x, jnp.arange(batch) % 3))
            key = f"compare {title} {dtype}"
            groups[key], used_by[key] = summarize(reports)
            print(f"{key:52s} {_line(groups[key])}  [{time.time() - t0:.0f}s]", flush=True)
    for title, model, shape in gradcheck_zoo():
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
    parser.add_argument("--out", default="docs/img/")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gradcheck_seeds = args.seeds if args.gradcheck_seeds is None else args.gradcheck_seeds
    groups, used_by = run(args.seeds, gradcheck_seeds)
    total = sum(g["not_pass"] for g in groups.values())
    print(f"false failures: {total} of {sum(g['reports'] for g in groups.values())} reports")
    figures = {"seeds": args.seeds, "gradcheck_seeds": gradcheck_seeds, "false_failures": total, "groups": groups}
    (out / "verdict_matrix.json").write_text(json.dumps(figures, indent=1))
    plot(used_by, out / "verdict_matrix.png")


if __name__ == "__main__":
    main()
