"""MLP 784-512-512-10 (ReLU, softmax cross-entropy), batch 256, float32: manual vs jax.grad.

Also measures, interleaved with the two steps (so that load on the machine
hits all alike), the matmul throughput the step could reach: ``jnp.dot`` on
2048x2048 float32 and a "limit" function doing only the step's own matmuls.
The peak is the fastest of their samples, so the manual step, whose FLOPs
include the limit's, is never reported above 100% of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.memory import mib
from manualbp.cli.benchmarks.timing import interleaved, machine
from manualbp.layers.activations import ReLU
from manualbp.layers.dense import Dense
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.sequential import Sequential

SIZES = (784, 512, 512, 10)
BATCH = 256


def step_flops(sizes=SIZES, batch=BATCH) -> int:
    """Matmul FLOPs of one step: forward x W, dW = x^T delta for every layer, dx = delta W^T for all but the first."""
    per_layer = [2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return sum(per_layer) * 2 + sum(per_layer[1:])


PEAK_N = 2048


def _matmuls(params, x, dz):
    """Only the step's matmuls: x W per layer, then dW = h^T delta per layer and delta W^T for all but the first."""
    weights = [p["W"] for p in params[::2]]
    hs = [x]
    for w in weights:
        hs.append(hs[-1] @ w)
    out, delta = hs[1:], dz
    for i in reversed(range(len(weights))):
        out.append(hs[i].T @ delta)
        if i:
            delta = delta @ weights[i].T
    return out


def run(repeats: int = 30, batch: int = BATCH, sizes=SIZES, peak_n: int = PEAK_N) -> dict:
    sizes = tuple(sizes)
    model = Sequential(Dense(sizes[1]), ReLU(), Dense(sizes[2]), ReLU(), Dense(sizes[3]))
    head = SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (sizes[0],), jnp.float32)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])

    # fresh jits, so the first call measures trace + compile
    a = jax.random.normal(jax.random.key(2), (peak_n, peak_n), jnp.float32)
    dz = jax.random.normal(jax.random.key(3), (batch, sizes[-1]), jnp.float32)
    dot, limit = jax.jit(jnp.dot), jax.jit(_matmuls)
    contenders = {
        **value_and_grad_steps(model, head),
        "limit": lambda p, x, y: limit(p, x, dz),
        "dot": lambda p, x, y: dot(a, a),
    }
    compile_s, memory, contenders = compile_and_memory(contenders, params, x, y)
    times = interleaved(contenders, (params, x, y), repeats=repeats)
    flops = step_flops(sizes, batch)
    peak = max(2 * peak_n**3 / times["dot"]["min_s"], flops / times["limit"]["min_s"]) / 1e9
    manual_gflops = flops / times["manual"]["median_s"] / 1e9
    return {
        "name": "mlp",
        "config": {"sizes": sizes, "batch": batch, "dtype": "float32", "activation": "relu", "repeats": repeats,
                   "peak_n": peak_n},
        "machine": machine(),
        "times": times,
        "ratio": times["manual"]["median_s"] / times["jax.grad"]["median_s"],
        "compile_s": compile_s,
        "memory": memory,
        "step_gflop": flops / 1e9,
        "manual_gflops": manual_gflops,
        "jaxgrad_gflops": flops / times["jax.grad"]["median_s"] / 1e9,
        "peak_matmul_gflops": peak,
        "manual_fraction_of_peak": manual_gflops / peak,
    }


def markdown(r: dict) -> str:
    t, c, n = r["times"], r["compile_s"], r["config"].get("peak_n", PEAK_N)
    return "\n".join([
        f"### MLP {'-'.join(map(str, r['config']['sizes']))}, batch {r['config']['batch']}, float32",
        "",
        "| contender | median step (ms) | p10-p90 (ms) | compile (s) | GFLOP/s | peak MiB (XLA) |",
        "|---|---|---|---|---|---|",
        f"| manual | {t['manual']['median_s'] * 1e3:.2f} | {t['manual']['p10_s'] * 1e3:.2f}-"
        f"{t['manual']['p90_s'] * 1e3:.2f} | {c['manual']:.2f} | {r['manual_gflops']:.1f} | "
        f"{mib(r['memory']['manual']['peak'])} |",
        f"| jax.grad | {t['jax.grad']['median_s'] * 1e3:.2f} | {t['jax.grad']['p10_s'] * 1e3:.2f}-"
        f"{t['jax.grad']['p90_s'] * 1e3:.2f} | {c['jax.grad']:.2f} | {r['jaxgrad_gflops']:.1f} | "
        f"{mib(r['memory']['jax.grad']['peak'])} |",
        "",
        f"manual/jax.grad = **{r['ratio']:.3f}** (target <= 1.00); manual at "
        f"**{100 * r['manual_fraction_of_peak']:.0f}%** of peak matmul throughput ({r['peak_matmul_gflops']:.1f} GFLOP/s: "
        f"the fastest sample of jnp.dot on {n}x{n} and of the step's own matmuls, interleaved with the steps; "
        f"target >= 70%); compile manual/jax.grad = {c['manual'] / c['jax.grad']:.2f} "
        "(target <= 1). "
        f"Step = {r['step_gflop']:.3f} GFLOP; {r['config']['repeats']} interleaved repeats.",
    ])
