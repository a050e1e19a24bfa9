"""One causal MultiHeadAttention layer, B=8, D=128, 4 heads, T = 128 ... 1024, float32: time and memory.

Contenders, interleaved in one run: the manual step (its backward
recomputes the probabilities a block of query rows at a time), once per
attention kernel asked for ("auto" by default: "loop" on a CPU, "batched"
on an accelerator; ``manualbp.layers.flash``), vs ``jax.value_and_grad`` of
the reference (the textbook forward: full (B, heads, T, T) scores and
``jax.nn.softmax``, whose probabilities jax.grad keeps for the backward).
Loss: mean squared error of the layer's output against a random target.
Memory is XLA's compiled memory analysis (``memory.compiled_memory``), time
the median of interleaved calls. ``dtype`` bfloat16: parameters and data in
bfloat16 (the step computes in it).
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


def contender(kernel: str) -> str:
    """The manual contender's name for an attention kernel: "manual" for "auto", else "manual[<kernel>]"."""
    return "manual" if kernel == "auto" else f"manual[{kernel}]"


def _one(T: int, repeats: int, kernels=("auto",), dtype: str = "float32", batch: int = B) -> dict:
    head = MeanSquaredError()
    models = {k: Sequential(MultiHeadAttention(HEADS, causal=True, kernel=k)) for k in kernels}
    first = next(iter(models.values()))
    params = jax.jit(lambda k: first.init(k, (T, D), jnp.float32)[0])(jax.random.key(0))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, T, D), jnp.float32)
    y = jax.random.normal(ky, (batch, T, D), jnp.float32)
    params, x, y = jax.tree_util.tree_map(lambda a: a.astype(dtype), (params, x, y))
    # fresh jits, so the first call measures trace + compile
    steps = {contender(k): value_and_grad_steps(m, head)["manual"] for k, m in models.items()}
    steps["jax.grad"] = value_and_grad_steps(first, head)["jax.grad"]
    compile_s, memory, steps = compile_and_memory(steps, params, x, y)
    times = interleaved(steps, (params, x, y), repeats=repeats)
    manual = [n for n in steps if n != "jax.grad"]
    return {"T": T, "dtype": dtype, "times": times, "compile_s": compile_s, "memory": memory,
            "ratio": {n: times[n]["median_s"] / times["jax.grad"]["median_s"] for n in manual},
            "memory_ratio": {n: memory[n]["peak"] / memory["jax.grad"]["peak"] for n in manual},
            "gflops": {n: step_flops(T, batch) / times[n]["median_s"] / 1e9 for n in steps}}


def run(repeats: int = 30, lengths=LENGTHS, kernels=("auto",), dtypes=("float32",), batch: int = B) -> dict:
    """Every T of ``lengths`` in every dtype of ``dtypes``: jax.grad and the manual step with each of ``kernels``."""
    return {
        "name": "attention",
        "config": {"B": batch, "D": D, "heads": HEADS, "causal": True, "dtypes": tuple(dtypes),
                   "lengths": tuple(lengths), "kernels": tuple(kernels), "repeats": repeats,
                   "memory": "XLA compiled memory analysis: arguments + outputs + temporaries"},
        "machine": machine(),
        "rows": [_one(T, repeats, kernels, dtype, batch) for dtype in dtypes for T in lengths],
    }


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        f"### One causal MultiHeadAttention layer, B={c['B']}, D={c['D']}, {c['heads']} heads, "
        f"{' and '.join(c.get('dtypes', ('float32',)))}",
        "",
        "| dtype | T | contender | median step (ms) | p10-p90 (ms) | GFLOP/s | compile (s) | peak MiB (XLA) | temp MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        for who, t in row["times"].items():
            m = row["memory"][who]
            lines.append(f"| {row.get('dtype', 'float32')} | {row['T']} | {who} | {t['median_s'] * 1e3:.2f} | "
                         f"{t['p10_s'] * 1e3:.2f}-{t['p90_s'] * 1e3:.2f} | {row['gflops'][who]:.1f} | "
                         f"{row['compile_s'][who]:.2f} | {mib(m['peak'])} | {mib(m['temp'])} |")
    lines.append("")
    lines.append("manual/jax.grad: " + "; ".join(
        f"{row.get('dtype', 'float32')} T={row['T']}: " + ", ".join(
            f"{who} time **{ratio:.2f}**, peak memory **{row['memory_ratio'][who]:.2f}**"
            for who, ratio in row["ratio"].items()) for row in r["rows"])
        + f". {c['repeats']} interleaved repeats; {r['machine']['backend']} {r['machine']['device']}, "
          f"jax {r['machine']['jax']}, {r['machine']['allocator']}, 1-min load average "
          f"{r['machine']['load_average_1min']:.1f}.")
    return "\n".join(lines)
