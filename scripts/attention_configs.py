"""MultiHeadAttention over many random configurations: manual vs jax.grad, and finite differences.

tests/test_attention.py runs a handful of configurations (to keep the suite fast); this script runs
as many as asked: heads 1-4, T 1-17, causal or not, a key padding mask or not, self- or
cross-attention, with or without biases, any block size, float32 and float64, jit and not. Each
configuration is compared layer by layer against jax.grad of the reference (``mbp.compare``) and,
in float64, against central finite differences (``mbp.gradcheck``). Every key mask keeps key 0, so
no query row is fully masked (that case has its own test).

Run: .venv/bin/python scripts/attention_configs.py [--n 64] [--seed 0]
Prints one line per configuration (a failing one's report after it) and a summary; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import manualbp as mbp  # noqa: E402

HEAD = mbp.MeanSquaredError()


def random_config(rng: np.random.Generator, dtype) -> dict:
    heads = int(rng.integers(1, 5))
    head_dim = None if rng.random() < 0.5 else int(rng.integers(1, 4))
    cross = bool(rng.random() < 0.3)
    T = int(rng.integers(1, 18))
    layer = mbp.MultiHeadAttention(
        heads, head_dim=head_dim, causal=not cross and bool(rng.random() < 0.5), use_bias=bool(rng.random() < 0.8),
        cross=cross, key_mask=bool(rng.random() < 0.5), block_size=None if rng.random() < 0.5 else int(rng.integers(1, T + 1)))
    return dict(layer=layer, B=int(rng.integers(1, 4)), T=T, D=heads * 2 if head_dim is None else int(rng.integers(1, 6)),
                S=int(rng.integers(1, 10)), Dc=int(rng.integers(1, 6)), dtype=dtype, jit=bool(rng.random() < 0.75))


def inputs_for(cfg: dict, rng: np.random.Generator):
    layer, dtype, B, T = cfg["layer"], cfg["dtype"], cfg["B"], cfg["T"]
    x = jnp.asarray(rng.standard_normal((B, T, cfg["D"])), dtype)
    inputs, shapes, S = [x], [(T, cfg["D"])], cfg["S"] if layer.cross else T
    if layer.cross:
        inputs.append(jnp.asarray(rng.standard_normal((B, S, cfg["Dc"])), dtype))
        shapes.append((S, cfg["Dc"]))
    if layer.key_mask:
        mask = rng.random((B, S)) < 0.6
        mask[:, 0] = True
        inputs.append(jnp.asarray(mask))
        shapes.append((S,))
    params, _ = layer.init(jax.random.key(int(rng.integers(1 << 30))), shapes[0] if len(shapes) == 1 else tuple(shapes), dtype)
    params = {k: v + jnp.asarray(0.3 * rng.standard_normal(v.shape), dtype) for k, v in params.items()}
    target = jnp.asarray(rng.standard_normal((B, T, cfg["D"])), dtype)
    return (params,), inputs[0] if len(inputs) == 1 else tuple(inputs), target


def describe(cfg: dict) -> str:
    layer = cfg["layer"]
    kind = "cross" if layer.cross else "causal" if layer.causal else "full"
    return (f"heads={layer.num_heads} head_dim={layer.head_dim} T={cfg['T']} B={cfg['B']} D={cfg['D']} {kind}"
            f"{' mask' if layer.key_mask else ''} bias={layer.use_bias} block={layer.block_size} "
            f"{jnp.dtype(cfg['dtype']).name}{' jit' if cfg['jit'] else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="configurations (half float32, half float64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    failed, seen = 0, {"heads": set(), "T": set(), "kind": set()}
    for i in range(args.n):
        cfg = random_config(rng, (jnp.float32, jnp.float64)[i % 2])
        params, inputs, target = inputs_for(cfg, rng)
        model = mbp.Sequential(cfg["layer"])
        reports = [mbp.compare(model, HEAD, params, inputs, target, jit=cfg["jit"])]
        if cfg["dtype"] == jnp.float64:
            reports.append(mbp.gradcheck(model, HEAD, params, inputs, target, k=4))
        bad = [report for report in reports if not report.ok]
        failed += len(bad)
        print(f"{i + 1:3d} {'FAIL' if bad else 'ok  '} {describe(cfg)}", flush=True)
        for report in bad:
            print(report, flush=True)
        layer = cfg["layer"]
        seen["heads"].add(layer.num_heads)
        seen["T"].add(cfg["T"])
        seen["kind"].add(("cross" if layer.cross else "causal" if layer.causal else "full") + ("+mask" if layer.key_mask else ""))
    print(f"{args.n} configurations, {failed} failed checks; heads {sorted(seen['heads'])}, "
          f"T {sorted(seen['T'])}, kinds {sorted(seen['kind'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
