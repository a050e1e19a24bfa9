"""Backprop through time: ||dL/dh_t|| against t for an RNN and an LSTM on long sequences.

The loss sits at the last step only, so every dL/dh_t with t < T-1 arrives
through the recurrence: for the RNN, dL/dh_(t-1) = (dL/dh_t (.) tanh'(z_t)) Wh^T,
a product of T - t factors (why plain RNNs are hard to train: Bengio et al. 1994); for the LSTM
the cell state's additive path c_t = f (.) c_(t-1) + i (.) g passes the
gradient on with gain f, no matrix and no squashing, so it fades much more
slowly. The task needs memory: the label is the sign of the sum of the
first few inputs' first feature, T steps before the loss.

Left: ||dL/dh_t|| against t at initialization for T steps. Right: the
ratio ||dL/dh_0|| / ||dL/dh_(T-1)|| as T grows; a straight line on the log
scale is a constant factor per step, the slope its logarithm. The per-step
norms come from ``gradient_flow`` (the layers' backward_trace extras).
float64, so the smallest norms (~1e-100) do not underflow.

Run: .venv/bin/python scripts/bptt_through_time.py [--out docs/img/]
Writes bptt_through_time.png and bptt_through_time.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the smallest ||dL/dh_t|| (~1e-40) underflow float32

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

import manualbp as mbp  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def models(hidden: int):
    return {
        "RNN (tanh, orthogonal Wh)": mbp.Sequential(mbp.RNN(hidden, return_sequences=False), mbp.Dense(2)),
        "RNN, Wh x 0.5": mbp.Sequential(mbp.RNN(hidden, return_sequences=False), mbp.Dense(2)),
        "LSTM (forget bias 1)": mbp.Sequential(mbp.LSTM(hidden, return_sequences=False), mbp.Dense(2)),
    }


def data(key, n: int, steps: int, dim: int, memory: int):
    x = jax.random.normal(key, (n, steps, dim), jnp.float64)
    y = (jnp.sum(x[:, :memory, 0], axis=1) > 0).astype(jnp.int32)
    return x, y


def step_norms(model, head, params, x, y):
    flow = mbp.gradient_flow(model, head, params, x, y)
    row = flow.rows[0]
    return row.timestep_norms["h"], flow.ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/", help="output folder")
    ap.add_argument("--steps", type=int, default=100, help="sequence length T")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--memory", type=int, default=5, help="the label depends on the first this-many steps")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--sweep", default="25,50,100,200,400", help="sequence lengths of the right panel")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dim = 4
    head = mbp.SoftmaxCrossEntropy()
    lengths = sorted(set(map(int, args.sweep.split(","))) | {args.steps})
    results = {}
    for name in models(args.hidden):
        results[name] = {"ratio_by_T": {}}
        for T in lengths:
            model = models(args.hidden)[name]
            x, y = data(jax.random.key(1), args.examples, T, dim, args.memory)
            params, _ = model.init(jax.random.key(0), (T, dim), jnp.float64)
            if "x 0.5" in name:
                params = ({**params[0], "Wh": 0.5 * params[0]["Wh"]}, params[1])
            norms, finite = step_norms(model, head, params, x, y)
            results[name]["ratio_by_T"][T] = norms[0] / norms[-1]
            if T == args.steps:
                results[name].update(norms=norms, finite=finite)
        r = results[name]
        ts, ratios = np.array(lengths, float), np.array([r["ratio_by_T"][T] for T in lengths])
        factor = float(np.exp(np.polyfit(ts, np.log(ratios), 1)[0]))  # fitted: ratio ~ factor^T
        r["factor_per_step"] = factor
        print(f"{name:28s} ||dL/dh_0|| / ||dL/dh_T-1|| at T = {args.steps}: {r['ratio_by_T'][args.steps]:.2e}; "
              f"x{factor:.3f} per step")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    for name, r in results.items():
        ax.semilogy(np.arange(args.steps), r["norms"], label=name)
    ax.set_title(f"T = {args.steps}, H = {args.hidden}, loss at the last step only, at initialization")
    ax.set_xlabel("time step t")
    ax.set_ylabel(f"||dL/dh_t||  (batch of {args.examples})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, r in results.items():
        label = f"{name}: x{r['factor_per_step']:.3f}/step"
        ax.semilogy(lengths, [r["ratio_by_T"][T] for T in lengths], "o-", label=label)
    ax.set_title("the same ratio as the sequence grows")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("||dL/dh_0|| / ||dL/dh_(T-1)||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Backprop through time: the RNN's gradient is a product of T - t factors Wh^T diag(tanh') and "
                 "fades going back in time; the LSTM's additive cell path fades far more slowly", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "bptt_through_time.png", dpi=110)
    meta = {"T": args.steps, "hidden": args.hidden, "input_dim": dim, "memory": args.memory,
            "examples": args.examples, "dtype": "float64", "jax": jax.__version__, "seconds": time.perf_counter() - t0}
    (out / "bptt_through_time.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out / 'bptt_through_time.png'} and .json in {meta['seconds']:.1f} s")


if __name__ == "__main__":
    main()
