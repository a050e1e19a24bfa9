"""Conv1D and ConvTranspose2D, each in a small model, float32: manual value_and_grad vs jax.grad of the reference.

- Conv1D: x (B=64, T=128, C=32) -> Conv1D(64, 5, SAME) -> ReLU -> Conv1D(64, 5, stride 2, dilation 2, SAME)
  -> ReLU -> Flatten -> Dense(10), softmax cross-entropy.
- ConvTranspose2D: a decoder, z (B=64, 7, 7, 32) -> ConvTranspose2D(32, 4, stride 2, SAME) -> ReLU
  -> ConvTranspose2D(1, 4, stride 2, SAME) -> (28, 28, 1) -> Flatten, mean squared error against a target image.

Target: manual/jax.grad <= 1.0 for each. Peak scratch memory of each compiled step (XLA's memory analysis) is
reported beside the times.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.timing import interleaved, machine
from manualbp.layers.activations import ReLU
from manualbp.layers.conv1d import Conv1D
from manualbp.layers.conv_transpose import ConvTranspose2D
from manualbp.layers.dense import Dense
from manualbp.layers.heads import MeanSquaredError, SoftmaxCrossEntropy
from manualbp.layers.reshape import Flatten
from manualbp.layers.sequential import Sequential

BATCH = 64
TARGET = 1.0


def _conv1d(batch=BATCH):
    model = Sequential(Conv1D(64, 5), ReLU(), Conv1D(64, 5, stride=2, dilation=2), ReLU(), Flatten(), Dense(10))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, 128, 32), jnp.float32)
    return model, SoftmaxCrossEntropy(), (128, 32), x, jax.random.randint(ky, (batch,), 0, 10)


def _conv_transpose(batch=BATCH):
    model = Sequential(ConvTranspose2D(32, 4, stride=2), ReLU(), ConvTranspose2D(1, 4, stride=2), Flatten())
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, 7, 7, 32), jnp.float32)
    return model, MeanSquaredError(), (7, 7, 32), x, jax.random.normal(ky, (batch, 28 * 28), jnp.float32)


MODELS = {
    "conv1d": (_conv1d, "Conv1D(64, 5, SAME) ReLU Conv1D(64, 5, stride 2, dilation 2) ReLU Dense(10) on (128, 32)"),
    "conv_transpose": (_conv_transpose, "ConvTranspose2D(32, 4, stride 2) ReLU ConvTranspose2D(1, 4, stride 2) "
                                        "on (7, 7, 32) -> (28, 28, 1), MSE"),
}


def _one(make, repeats, batch=BATCH):
    model, head, in_shape, x, y = make(batch)
    params, _ = model.init(jax.random.key(0), in_shape, jnp.float32)
    contenders = value_and_grad_steps(model, head)  # fresh jits, so the first call measures trace + compile
    compile_s, memory, contenders = compile_and_memory(contenders, params, x, y)
    scratch = {k: m["temp"] for k, m in memory.items()}
    times = interleaved(contenders, (params, x, y), repeats=repeats)
    return {"times": times, "compile_s": compile_s, "scratch_bytes": scratch,
            "ratio": times["manual"]["median_s"] / times["jax.grad"]["median_s"], "target": TARGET}


def run(repeats: int = 30, batch: int = BATCH) -> dict:
    return {
        "name": "conv_layers",
        "config": {"batch": batch, "dtype": "float32", "repeats": repeats,
                   "models": {k: description for k, (_, description) in MODELS.items()}},
        "machine": machine(),
        "load_average_1min_before": os.getloadavg()[0],
        **{name: _one(make, repeats, batch) for name, (make, _) in MODELS.items()},
    }


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [f"### Conv1D and ConvTranspose2D, batch {c['batch']}, float32", "",
             "| model | contender | median step (ms) | p10-p90 (ms) | compile (s) | scratch (MB) |",
             "|---|---|---|---|---|---|"]
    for name in MODELS:
        for who in ("manual", "jax.grad"):
            t = r[name]["times"][who]
            lines.append(f"| {name} | {who} | {t['median_s'] * 1e3:.2f} | {t['p10_s'] * 1e3:.2f}-{t['p90_s'] * 1e3:.2f} | "
                         f"{r[name]['compile_s'][who]:.2f} | {r[name]['scratch_bytes'][who] / 1e6:.1f} |")
    lines.append("")
    lines.append("; ".join(f"{name}: {c['models'][name]}: manual/jax.grad = **{r[name]['ratio']:.3f}** "
                           f"(target <= {r[name]['target']:.2f})" for name in MODELS)
                 + f". {c['repeats']} interleaved repeats; 1-min load average before the run "
                   f"{r['load_average_1min_before']:.1f}.")
    return "\n".join(lines)
