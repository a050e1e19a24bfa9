"""One causal MultiHeadAttention layer, B=8, D=128, 4 heads, T = 128 ... 1024, float32: time and memory.

Contenders, interleaved in one run: the manual step (its backward
recomputes the probabilities from the cached row log-sum-exp, a block of
query rows at a time) vs ``jax.value_and_grad`` of the reference (the
textbook forward: full (B, heads, T, T) scores and ``jax.nn.softmax``,
whose probabilities jax.grad keeps for the backward). Loss: mean squared
error of the layer's output against a random target. Memory is XLA's
compiled memory analysis (``memory.compiled_memory``), time the median of
interleaved calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.memory import mib
from manualbp.cli.benchmarks.timing import interleaved, machine
from manualbp.layers.attention import MultiHeadAttention
from manualbp.layers.heads import MeanSquaredError
from manualbp.layers.sequential import Sequential

B, D, HEADS = 8, 128, 4
LENGTHS = (128, 256, 512, 1024)


def step_flops(T: int, B: int = B, D: int = D) -> int:
    """Matmul FLOPs of one textbook step: attention 4 B T^2 D forward + 8 B T^2 D backward, projections 8 + 16 B T D^2.

    The manual step also recomputes Q K^T (2 B T^2 D more); GFLOP/s below are of this common count.
    """
    return 12 * B * T * T * D + 24 * B * T * D * D


def _one(T: int, repeats: int) -> dict:
    model, head = Sequential(MultiHeadAttention(HEADS, causal=True)), MeanSquaredError()
    params = jax.jit(lambda k: model.init(k, (T, D), jnp.float32)[0])(jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (B, T, D), jnp.float32)
    y = jax.random.normal(ky, (B, T, D), jnp.float32)
    steps = value_and_grad_steps(model, head)  # fresh jits, so the first call measures trace + compile
    compile_s, memory = compile_and_memory(steps, params, x, y)
    times = interleaved(steps, (params, x, y), repeats=repeats)
    return {"T": T, "times": times, "compile_s": compile_s, "memory": memory,
            "ratio": times["manual"]["median_s"] / times["jax.grad"]["median_s"],
            "memory_ratio": memory["manual"]["peak"] / memory["jax.grad"]["peak"],
            "gflops": {n: step_flops(T) / times[n]["median_s"] / 1e9 for n in steps}}


def run(repeats: int = 30) -> dict:
    return {
        "name": "attention",
        "config": {"B": B, "D": D, "heads": HEADS, "causal": True, "dtype": "float32", "lengths": LENGTHS,
                   "repeats": repeats, "memory": "XLA compiled memory analysis: arguments + outputs + temporaries"},
        "machine": machine(),
        "rows": [_one(T, repeats) for T in LENGTHS],
    }


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        f"### One causal MultiHeadAttention layer, B={c['B']}, D={c['D']}, {c['heads']} heads, float32",
        "",
        "| T | contender | median step (ms) | p10-p90 (ms) | GFLOP/s | compile (s) | peak MiB (XLA) | temp MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        for who in ("manual", "jax.grad"):
            t, m = row["times"][who], row["memory"][who]
            lines.append(f"| {row['T']} | {who} | {t['median_s'] * 1e3:.2f} | {t['p10_s'] * 1e3:.2f}-"
                         f"{t['p90_s'] * 1e3:.2f} | {row['gflops'][who]:.1f} | {row['compile_s'][who]:.2f} | "
                         f"{mib(m['peak'])} | {mib(m['temp'])} |")
    lines.append("")
    lines.append("manual/jax.grad: " + "; ".join(
        f"T={row['T']}: time **{row['ratio']:.2f}**, peak memory **{row['memory_ratio']:.2f}**" for row in r["rows"])
        + f". {c['repeats']} interleaved repeats; {r['machine']['backend']} {r['machine']['device']}, "
          f"jax {r['machine']['jax']}, {r['machine']['allocator']}, 1-min load average "
          f"{r['machine']['load_average_1min']:.1f}.")
    return "\n".join(lines)
