"""The cost of the full gradient: per-coordinate finite differences vs manual backprop vs jax.grad.

Seed 004: the numerical gradient (C(w + eps e_j) - C(w - eps e_j)) / 2 eps
needs a forward pass per parameter (two, centred), each costing O(P) for a
network of P parameters, so O(P^2) in all; backprop gets all P partial
derivatives from one forward and one backward pass, O(P). On a log-log
plot of time against P the slopes are ~2 and ~1 (at small P fixed
per-call overheads flatten both; the slopes are fitted on the largest
sizes).

Finite differences run in float64 as one compiled ``lax.map`` over the
coordinates (32 at a time), not a Python loop, so the figure is compute,
not interpreter overhead. Manual backprop is ``manualbp.value_and_grad``,
autodiff is ``manualbp.reference.value_and_grad`` (``jax.value_and_grad`` of the
reference forward); both jitted, timed interleaved.

Run: .venv/bin/python scripts/finite_differences_vs_backprop.py [--out docs/img/]
Writes finite_differences_vs_backprop.png and finite_differences_vs_backprop.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import manualbp as mbp  # noqa: E402
from manualbp import reference as ref  # noqa: E402
from manualbp.cli.benchmarks.timing import block, interleaved, machine  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EPS = 1e-6


def mlp(width: int):
    return mbp.Sequential(mbp.Dense(width), mbp.Tanh(), mbp.Dense(width), mbp.Tanh(), mbp.Dense(4))


def fd_gradient_fn(model, head, unravel, x, y):
    """theta -> the central-difference gradient, one coordinate (two forward passes) at a time."""

    def loss(theta):
        out, _ = model.forward(unravel(theta), x)
        return head.forward(out, y)[0]

    @jax.jit
    def fd(theta):
        def column(j):
            e = jnp.zeros_like(theta).at[j].set(EPS)
            return (loss(theta + e) - loss(theta - e)) / (2 * EPS)

        return jax.lax.map(column, jnp.arange(theta.size), batch_size=32)

    return fd


def timed(fn, *args, repeats: int) -> float:
    """Fastest of ``repeats`` calls after a warm-up (the least disturbed by other work on a shared machine)."""
    block(fn(*args))  # compile and warm up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args))
        samples.append(time.perf_counter() - t0)
    return float(np.min(samples))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/", help="output folder")
    ap.add_argument("--fd-widths", default="2,4,8,16,32,64,96", help="widths w of the 16-w-w-4 MLP, all methods")
    ap.add_argument("--bp-widths", default="256,512,1024", help="larger widths, backprop only")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fit", type=int, default=3, help="fit the slopes on this many largest sizes")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    head = mbp.SoftmaxCrossEntropy()
    x = jax.random.normal(jax.random.key(1), (args.batch, 16), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 4)

    fd_widths = set(map(int, args.fd_widths.split(",")))
    rows = []
    for width in sorted(fd_widths | set(map(int, args.bp_widths.split(",")))):
        model = mlp(width)
        params, _ = model.init(jax.random.key(0), (16,), jnp.float64)
        theta, unravel = ravel_pytree(params)
        manual = mbp.value_and_grad(model, head, check=False)
        autodiff = ref.value_and_grad(model, head)
        forward = jax.jit(lambda p, x, y, model=model: head.forward(model.forward(p, x)[0], y)[0])
        t = interleaved({"manual": manual, "jax.grad": autodiff, "forward": forward}, (params, x, y), repeats=20)
        r = {"width": width, "params": int(theta.size), "manual_s": t["manual"]["p10_s"],
             "jax_grad_s": t["jax.grad"]["p10_s"], "forward_s": t["forward"]["p10_s"],
             "manual_median_s": t["manual"]["median_s"], "jax_grad_median_s": t["jax.grad"]["median_s"],
             "fd_s": None}
        if width in fd_widths:
            fd = fd_gradient_fn(model, head, unravel, x, y)
            r["fd_s"] = timed(fd, theta, repeats=3)
            g_manual = ravel_pytree(manual(params, x, y)[1])[0]
            r["fd_vs_manual_norm_rel"] = float(jnp.linalg.norm(fd(theta) - g_manual) / jnp.linalg.norm(g_manual))
            r["fd_over_manual"] = r["fd_s"] / r["manual_s"]
        rows.append(r)
        fd_text = "" if r["fd_s"] is None else (
            f"finite differences {r['fd_s']:.3e} s (FD/manual {r['fd_over_manual']:.0f}, "
            f"FD vs manual {r['fd_vs_manual_norm_rel']:.1e}), ")
        print(f"P = {r['params']:7d}: {fd_text}manual {r['manual_s']:.3e} s, jax.grad {r['jax_grad_s']:.3e} s")

    k = args.fit
    series = {}
    for name, key in (("finite differences", "fd_s"), ("manual backprop", "manual_s"), ("jax.grad", "jax_grad_s")):
        pts = [(r["params"], r[key]) for r in rows if r[key] is not None]
        ps, ts = np.array(pts, float).T
        series[name] = (ps, ts, np.polyfit(np.log(ps[-k:]), np.log(ts[-k:]), 1))
    slopes = {name: float(c[0]) for name, (_, _, c) in series.items()}
    print("fitted slopes (log t vs log P, largest sizes): " + ", ".join(f"{n} {s:.2f}" for n, s in slopes.items()))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    p_max = max(r["params"] for r in rows)
    for (name, (ps, ts, c)), marker in zip(series.items(), "os^", strict=True):
        line, = ax.loglog(ps, ts, marker + "-", label=f"{name}: slope {slopes[name]:.2f}")
        fit_ps = np.geomspace(ps[-k], ps[-1] if name != "finite differences" else p_max, 20)
        ax.loglog(fit_ps, np.exp(np.polyval(c, np.log(fit_ps))), "--", lw=2, alpha=0.5, color=line.get_color())
    ax.set_xlabel(f"number of parameters P (MLP 16-w-w-4, batch {args.batch}, float64)")
    ax.set_ylabel("seconds for the full gradient (fastest run / 10th percentile)")
    ax.set_title("Finite differences: 2 forward passes per parameter (slope ~2);\n"
                 "backprop: one forward + one backward for all of them (slope ~1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=f"slopes fitted (dashed) on each method's {k} largest P;\nfinite differences extrapolated",
              fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "finite_differences_vs_backprop.png", dpi=110)
    meta = {"eps": EPS, "batch": args.batch, "fit_points": k, "machine": machine(), "dtype": "float64",
            "seconds": time.perf_counter() - t0}
    result = {"meta": meta, "rows": rows, "slopes": slopes}
    (out / "finite_differences_vs_backprop.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out / 'finite_differences_vs_backprop.png'} and .json in {meta['seconds']:.1f} s")


if __name__ == "__main__":
    main()
