"""Issue 30's softmax figures: the one-pass y (dy - sum dy y), the two-pass ``softmax_vjp`` and jax.grad, against exact.

For each input scale and dtype, ``--slices`` slices of 5 logits x = scale N(0, 1) and a cotangent dy ~ N(0, 1);
the truth is the closed form y (dy - sum dy y) in 1500-digit arithmetic (mpmath; the smallest probability at
scale 100 is about 1e-300). Per slice, each backward's normwise relative error and its ratio to jax.grad's
(both floored at the dtype's epsilon); per scale, the ratio's p99 and max and the largest error.

Run: .venv/bin/python scripts/softmax_saturation.py [--slices 200]  (about 10 s)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the closed form lives with its test

import accuracy  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from manualbp.layers.softmax import softmax_vjp  # noqa: E402

BACKWARDS = {
    "one-pass (before)": jax.jit(lambda x, dy: (lambda y: y * (dy - jnp.sum(dy * y, -1, keepdims=True)))(jax.nn.softmax(x))),
    "two-pass (after)": jax.jit(lambda x, dy: softmax_vjp(jax.nn.softmax(x), dy, -1)),
    "jax.grad": jax.jit(lambda x, dy: jax.vjp(jax.nn.softmax, x)[1](dy)[0]),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args(argv)
    print("| dtype | scale | one-pass: ratio p99 / max | two-pass: ratio p99 / max | largest error: one-pass, two-pass, jax.grad |")
    print("|---|---|---|---|---|")
    for dtype in (np.float64, np.float32):
        eps = float(np.finfo(dtype).eps)
        for scale in (1, 5, 30, 100):
            rng = np.random.default_rng(2)
            err = {k: [] for k in BACKWARDS}
            for _ in range(args.slices):
                x, dy = (scale * rng.standard_normal(5)).astype(dtype), rng.standard_normal(5).astype(dtype)
                t = accuracy.softmax_vjp_exact(x, dy, dps=1500)
                for k, f in BACKWARDS.items():
                    err[k].append(np.linalg.norm(np.asarray(f(x, dy), np.float64) - t) / np.linalg.norm(t))
            j = np.maximum(err["jax.grad"], eps)
            cells = []
            for k in ("one-pass (before)", "two-pass (after)"):
                r = np.maximum(err[k], eps) / j
                cells.append(f"{np.quantile(r, 0.99):.2f} / {r.max():.2f}")
            worst = ", ".join(f"{max(err[k]):.1e}" for k in BACKWARDS)
            print(f"| {np.dtype(dtype).name} | {scale} | {cells[0]} | {cells[1]} | {worst} |", flush=True)


if __name__ == "__main__":
    main()
