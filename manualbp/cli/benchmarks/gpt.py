"""A small GPT, B=8, T=512, D=128, 4 heads, vocabulary 256, float32: time and memory, and memory vs depth.

Model: token + positional embedding -> L pre-norm causal TransformerBlocks
(MLP 4 D, GELU) -> LayerNorm -> Dense(256) at every position; softmax
cross-entropy on the next token. Timed with L = 4 blocks, manual vs
``jax.value_and_grad`` of the reference, interleaved. Peak memory (XLA's
compiled memory analysis, ``memory.compiled_memory``) for L = 1, 2, 4, 8:
every block adds its cache to both steps, and jax.grad also keeps the
block's attention probabilities (B, heads, T, T), so the ratio falls with L
towards (manual's cache per block) / (jax.grad's per block). ``dtype``
bfloat16: parameters in bfloat16 (the step computes in it); ``kernel``: the
attention kernel of the manual step (``manualbp.layers.flash``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.memory import compiled_memory, mib
from manualbp.cli.benchmarks.timing import interleaved, machine
from manualbp.layers.dense import Dense
from manualbp.layers.embedding import Embedding
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.norm import LayerNorm
from manualbp.layers.positional import PositionalEmbedding
from manualbp.layers.sequential import Sequential
from manualbp.layers.transformer import TransformerBlock

B, T, D, HEADS, VOCAB = 8, 512, 128, 4, 256
BLOCKS = 4
DEPTHS = (1, 2, 4, 8)


def model(blocks: int = BLOCKS, T: int = T, kernel: str = "auto") -> Sequential:
    return Sequential(Embedding(VOCAB, D), PositionalEmbedding(T, D),
                      *[TransformerBlock(D, HEADS, causal=True, kernel=kernel) for _ in range(blocks)], LayerNorm(),
                      Dense(VOCAB))


def _memory_at_depth(blocks: int, T: int = T, batch: int = B, dtype: str = "float32", kernel: str = "auto") -> dict:
    """Compiled peak memory of both steps for a model of ``blocks`` blocks (shapes only: nothing allocated or run)."""
    net, head = model(blocks, T, kernel), SoftmaxCrossEntropy()
    params = jax.eval_shape(lambda k: net.init(k, (T,), jnp.dtype(dtype))[0], jax.random.key(0))
    ids = jax.ShapeDtypeStruct((batch, T), jnp.int32)
    memory = {name: compiled_memory(fn, params, ids, ids) for name, fn in value_and_grad_steps(net, head).items()}
    return {"blocks": blocks, "memory": memory, "ratio": memory["manual"]["peak"] / memory["jax.grad"]["peak"]}


def run(repeats: int = 30, T: int = T, batch: int = B, blocks: int = BLOCKS, depths=DEPTHS, dtype: str = "float32",
        kernel: str = "auto") -> dict:
    """The ``blocks``-block GPT timed; peak memory at every depth of ``depths`` (the timed depth's is always measured)."""
    net, head = model(blocks, T, kernel), SoftmaxCrossEntropy()
    params = jax.jit(lambda k: net.init(k, (T,), jnp.float32)[0])(jax.random.key(0))
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.randint(kx, (batch, T), 0, VOCAB)
    y = jax.random.randint(ky, (batch, T), 0, VOCAB)
    compile_s, memory, steps = compile_and_memory(value_and_grad_steps(net, head), params, x, y)
    times = interleaved(steps, (params, x, y), repeats=repeats)
    at_default = {"blocks": blocks, "memory": memory, "ratio": memory["manual"]["peak"] / memory["jax.grad"]["peak"]}
    depths = sorted([at_default, *(_memory_at_depth(L, T, batch, dtype, kernel) for L in set(depths) - {blocks})],
                    key=lambda d: d["blocks"])
    return {
        "name": "gpt",
        "config": {"B": batch, "T": T, "D": D, "heads": HEADS, "vocab": VOCAB, "blocks": blocks, "dtype": dtype,
                   "kernel": kernel, "repeats": repeats,
                   "memory": "XLA compiled memory analysis: arguments + outputs + temporaries"},
        "machine": machine(),
        "times": times,
        "compile_s": compile_s,
        "ratio": times["manual"]["median_s"] / times["jax.grad"]["median_s"],
        "memory": at_default["memory"],
        "memory_ratio": at_default["ratio"],
        "depths": depths,
    }


def markdown(r: dict) -> str:
    c, t, cs, m = r["config"], r["times"], r["compile_s"], r["memory"]
    lines = [
        f"### GPT, {c['blocks']} causal blocks, B={c['B']}, T={c['T']}, D={c['D']}, {c['heads']} heads, "
        f"vocabulary {c['vocab']}, {c.get('dtype', 'float32')}"
        + (f", attention kernel {c['kernel']}" if c.get("kernel", "auto") != "auto" else ""),
        "",
        "| contender | median step (ms) | p10-p90 (ms) | compile (s) | peak MiB (XLA) | temp MiB |",
        "|---|---|---|---|---|---|",
    ]
    for who in ("manual", "jax.grad"):
        lines.append(f"| {who} | {t[who]['median_s'] * 1e3:.1f} | {t[who]['p10_s'] * 1e3:.1f}-{t[who]['p90_s'] * 1e3:.1f} "
                     f"| {cs[who]:.2f} | {mib(m[who]['peak'])} | {mib(m[who]['temp'])} |")
    lines += [
        "",
        f"manual/jax.grad: time **{r['ratio']:.3f}** (target <= 1.1), peak memory **{r['memory_ratio']:.3f}** "
        f"(target <= 0.5). {c['repeats']} interleaved repeats; {r['machine']['backend']} {r['machine']['device']}, "
        f"jax {r['machine']['jax']}, {r['machine']['allocator']}, 1-min load average "
        f"{r['machine']['load_average_1min']:.1f}.",
        "",
        "| blocks | manual peak MiB | jax.grad peak MiB | manual/jax.grad |",
        "|---|---|---|---|",
    ]
    for d in r["depths"]:
        lines.append(f"| {d['blocks']} | {mib(d['memory']['manual']['peak'])} | {mib(d['memory']['jax.grad']['peak'])} | "
                     f"{d['ratio']:.3f} |")
    return "\n".join(lines)
