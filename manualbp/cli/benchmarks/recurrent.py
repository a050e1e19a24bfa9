"""RNN, LSTM and GRU, D=64, H=256, T=64, batch 64, float32, loss on the last step's projection to 10 classes.

Contenders, interleaved in one run: the manual BPTT step vs ``jax.value_and_grad``
of the reference (the textbook step inside ``lax.scan``, default unroll).
Targets on the 2-core CPU: manual/jax.grad <= 0.75 (RNN), <= 0.85 (LSTM, GRU).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.memory import mib
from manualbp.cli.benchmarks.timing import interleaved, machine
from manualbp.layers.dense import Dense
from manualbp.layers.gru import GRU
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.lstm import LSTM
from manualbp.layers.rnn import RNN
from manualbp.layers.sequential import Sequential

D, H, T, BATCH, CLASSES = 64, 256, 64, 64, 10
TARGETS = {"rnn": 0.75, "lstm": 0.85, "gru": 0.85}
LAYERS = ("rnn", "lstm", "gru")


def _one(name, layer, repeats, T=T, batch=BATCH):
    model = Sequential(layer, Dense(CLASSES))
    head = SoftmaxCrossEntropy()
    params, _ = model.init(jax.random.key(0), (T, D), jnp.float32)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, T, D), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, CLASSES)
    contenders = value_and_grad_steps(model, head)  # fresh jits, so the first call measures trace + compile
    compile_s, memory, contenders = compile_and_memory(contenders, params, x, y)
    times = interleaved(contenders, (params, x, y), repeats=repeats)
    return {
        "times": times,
        "compile_s": compile_s,
        "memory": memory,
        "ratio": times["manual"]["median_s"] / times["jax.grad"]["median_s"],
        "target": TARGETS[name],
    }


def run(repeats: int = 30, T: int = T, batch: int = BATCH, hidden: int = H) -> dict:
    return {
        "name": "recurrent",
        "config": {"D": D, "H": hidden, "T": T, "batch": batch, "classes": CLASSES, "dtype": "float32",
                   "loss": "softmax cross-entropy on the last step", "repeats": repeats},
        "machine": machine(),
        "load_average_1min_before": os.getloadavg()[0],  # other processes on the machine skew both contenders
        "rnn": _one("rnn", RNN(hidden, return_sequences=False), repeats, T, batch),
        "lstm": _one("lstm", LSTM(hidden, return_sequences=False), repeats, T, batch),
        "gru": _one("gru", GRU(hidden, return_sequences=False), repeats, T, batch),
    }


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        f"### RNN, LSTM and GRU, D={c['D']}, H={c['H']}, T={c['T']}, batch {c['batch']}, float32, "
        f"loss on the last step ({c['classes']} classes)",
        "",
        "| layer | contender | median step (ms) | p10-p90 (ms) | compile (s) | peak MiB (XLA) |",
        "|---|---|---|---|---|---|",
    ]
    for name in LAYERS:
        for who in ("manual", "jax.grad"):
            t, cs = r[name]["times"][who], r[name]["compile_s"][who]
            lines.append(f"| {name.upper()} | {who} | {t['median_s'] * 1e3:.2f} | {t['p10_s'] * 1e3:.2f}-"
                         f"{t['p90_s'] * 1e3:.2f} | {cs:.2f} | {mib(r[name]['memory'][who]['peak'])} |")
    lines.append("")
    lines.append("; ".join(
        f"{name.upper()} manual/jax.grad = **{r[name]['ratio']:.3f}** (target <= {r[name]['target']:.2f}), "
        f"compile {r[name]['compile_s']['manual'] / r[name]['compile_s']['jax.grad']:.2f}"
        for name in LAYERS
    ) + f". {c['repeats']} interleaved repeats; jax.grad of the reference's lax.scan with default unroll; "
      f"1-min load average before the run {r['load_average_1min_before']:.1f}.")
    return "\n".join(lines)
