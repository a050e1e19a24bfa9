"""CNN 28x28x1 -> conv 3x3 32 -> maxpool 2 -> conv 3x3 64 -> maxpool 2 -> dense 10, batch 128, float32.

Manual value_and_grad vs ``jax.value_and_grad`` of the reference (which
pools with ``lax.reduce_window``, as flax's ``max_pool``: its gradient is a
``select_and_scatter_add``), and vs a "limit" function that performs only
the convolutions and matmuls a training step needs (no ReLU, pooling, loss
or bias work), with the same formulations the manual step uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.cli.benchmarks.contenders import compile_and_memory, value_and_grad_steps
from manualbp.cli.benchmarks.memory import mib
from manualbp.cli.benchmarks.timing import compile_time, interleaved, machine
from manualbp.layers.activations import ReLU
from manualbp.layers.conv import Conv2D
from manualbp.layers.dense import Dense
from manualbp.layers.heads import SoftmaxCrossEntropy
from manualbp.layers.pool import MaxPool2D
from manualbp.layers.reshape import Flatten
from manualbp.layers.sequential import Sequential

BATCH = 128
INPUT = (28, 28, 1)
CLASSES = 10


def model() -> Sequential:
    return Sequential(Conv2D(32, 3, padding="SAME"), ReLU(), MaxPool2D(2), Conv2D(64, 3, padding="SAME"), ReLU(),
                      MaxPool2D(2), Flatten(), Dense(CLASSES))


def _limit_args(params, x):
    """Arrays of the step's shapes: the layers' inputs and the gradients arriving at each conv and at the dense."""
    (c1, _, _, c2, _, _, _, d3) = params
    keys = jax.random.split(jax.random.key(2), 5)
    batch = x.shape[0]
    h1 = jax.random.normal(keys[0], (batch, 14, 14, 32), x.dtype)
    h2 = jax.random.normal(keys[1], (batch, 7 * 7 * 64), x.dtype)
    dz1 = jax.random.normal(keys[2], (batch, 28, 28, 32), x.dtype)
    dz2 = jax.random.normal(keys[3], (batch, 14, 14, 64), x.dtype)
    dz3 = jax.random.normal(keys[4], (batch, CLASSES), x.dtype)
    return (x, c1["W"], h1, c2["W"], h2, d3["W"], dz1, dz2, dz3)


def _limit(x, W1, h1, W2, h2, W3, dz1, dz2, dz3):
    """Forward: conv1, conv2, dense; backward: dense dW and dx, conv2 dW and dx, conv1 dW (x needs no gradient)."""
    conv = Conv2D(1, 3)  # geometry only: 3x3, stride 1, SAME, dilation 1
    geo = conv._geometry((28, 28))[:4]
    geo2 = conv._geometry((14, 14))[:4]
    dn = ("NHWC", "HWIO", "NHWC")
    z1 = lax.conv_general_dilated(x, W1, (1, 1), "SAME", dimension_numbers=dn)
    z2 = lax.conv_general_dilated(h1, W2, (1, 1), "SAME", dimension_numbers=dn)
    z3 = h2 @ W3
    dW3, dh2 = h2.T @ dz3, dz3 @ W3.T
    dW2 = Conv2D._dW(h1, dz2, *geo2, (14, 14))
    dh1 = Conv2D._dx(dz2, W2, (14, 14), *geo2, (14, 14))
    dW1 = Conv2D._dW(x, dz1, *geo, (28, 28))
    return z1, z2, z3, dW3, dh2, dW2, dh1, dW1


def run(repeats: int = 30, batch: int = BATCH) -> dict:
    net, head = model(), SoftmaxCrossEntropy()
    params, _ = net.init(jax.random.key(0), INPUT, jnp.float32)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, *INPUT), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, CLASSES)

    # fresh jits, so the first call measures trace + compile
    steps = value_and_grad_steps(net, head)
    compile_s, memory, steps = compile_and_memory(steps, params, x, y)
    limit = jax.jit(_limit)
    largs = _limit_args(params, x)
    compile_s["limit"] = compile_time(limit, *largs)

    def limit_step(p, x, y):
        del p, x, y
        return limit(*largs)

    times = interleaved({**steps, "limit": limit_step}, (params, x, y), repeats=repeats)
    manual, autodiff, lim = (times[k]["median_s"] for k in ("manual", "jax.grad", "limit"))
    return {
        "name": "cnn",
        "config": {"input": INPUT, "batch": batch, "dtype": "float32", "repeats": repeats,
                   "model": "conv 3x3 32 SAME -> ReLU -> maxpool 2 -> conv 3x3 64 SAME -> ReLU -> maxpool 2 -> "
                            "dense 10, softmax cross-entropy"},
        "machine": machine(),
        "times": times,
        "ratio": manual / autodiff,
        "ratio_to_limit": manual / lim,
        "compile_s": compile_s,
        "memory": memory,
    }


def markdown(r: dict) -> str:
    t, c = r["times"], r["compile_s"]

    def row(name):
        peak = mib(r["memory"][name]["peak"]) if name in r["memory"] else "-"
        return (f"| {name} | {t[name]['median_s'] * 1e3:.2f} | {t[name]['p10_s'] * 1e3:.2f}-"
                f"{t[name]['p90_s'] * 1e3:.2f} | {c[name]:.2f} | {peak} |")

    return "\n".join([
        f"### CNN {'x'.join(map(str, r['config']['input']))}: {r['config']['model']}, batch "
        f"{r['config']['batch']}, float32",
        "",
        "| contender | median step (ms) | p10-p90 (ms) | compile (s) | peak MiB (XLA) |",
        "|---|---|---|---|---|",
        row("manual"),
        row("jax.grad"),
        row("limit"),
        "",
        f"manual/jax.grad = **{r['ratio']:.3f}** (target <= 0.45); manual/limit = **{r['ratio_to_limit']:.2f}** "
        f"(target <= 1.25; limit = only the convolutions and matmuls of a step); compile manual/jax.grad = "
        f"{c['manual'] / c['jax.grad']:.2f}. {r['config']['repeats']} interleaved repeats; "
        f"{r['machine']['backend']} {r['machine']['device']}, jax {r['machine']['jax']}, {r['machine']['allocator']}.",
    ])
