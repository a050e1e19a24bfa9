"""Vanishing gradients in a 20-layer MLP: ||delta^l|| per layer at init and after training.

delta^l = dL/dz^l is a product over the layers above of W^T f'(z) factors
(BP2 of Nielsen, Neural Networks and Deep Learning, ch. 2). sigmoid' <= 1/4, so a sigmoid stack multiplies the
gradient by a factor well below 1 at every layer and the first layers learn
nothing; tanh (f' <= 1) and ReLU (f' in {0, 1}) shrink it less; an identity
path (x + F(x), a ResNet block: dE/dx = dE/dy (1 + dF/dx)) or a LayerNorm (which rescales each
layer's input) keeps it alive. The measured factor per layer is the
geometric-mean ratio ||delta^l|| / ||delta^(l+1)||.

Run: .venv/bin/python scripts/vanishing_gradients.py [--out docs/img/]
Writes vanishing_gradients.png and vanishing_gradients.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import manualbp as mbp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def build(kind: str, depth: int, width: int, classes: int):
    """A depth-layer MLP (one Dense per hidden layer) of the given kind, then a Dense output layer."""
    act = {"sigmoid": mbp.Sigmoid, "tanh": mbp.Tanh}.get(kind, mbp.ReLU)
    layers = []
    for i in range(depth):
        if kind == "relu+residual" and i > 0:  # the first layer changes the width, so it cannot be residual
            layers.append(mbp.Residual(mbp.Sequential(mbp.ReLU(), mbp.Dense(width))))  # x + W relu(x)
        elif kind == "relu+layernorm":
            layers += [mbp.Dense(width), mbp.LayerNorm(), mbp.ReLU()]
        else:
            layers += [mbp.Dense(width), act()]
    return mbp.Sequential(*layers, mbp.Dense(classes))


def init(model, kind: str, key, dim: int, depth: int):
    """LeCun-normal params; a residual branch's W scaled by 1/sqrt(depth), so the sum of depth branches
    keeps the activations' variance O(1) (as Fixup/SkipInit-style initializations do)."""
    params, _ = model.init(key, (dim,), jnp.float32)
    if kind != "relu+residual":
        return params
    scale = 1 / np.sqrt(depth)
    # a residual layer's params are its block's: ({} for the ReLU, {"W", "b"} for the Dense)
    return tuple((p[0], {"W": p[1]["W"] * scale, "b": p[1]["b"]}) if isinstance(layer, mbp.Residual) else p
                 for layer, p in zip(model.layers, params, strict=True))


def data(key, n: int, dim: int, classes: int):
    """Gaussian inputs labelled by a random two-layer teacher (a task that needs the depth to be trained)."""
    kx, k1, k2 = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, dim), jnp.float32)
    hidden = jnp.tanh(x @ jax.random.normal(k1, (dim, 32), jnp.float32))
    y = jnp.argmax(hidden @ jax.random.normal(k2, (32, classes), jnp.float32), axis=-1)
    return x, y


def deltas(model, head, params, x, y):
    """||delta^l|| = ||dL/dz^l|| for the hidden Dense layers (output layer excluded), from gradient_flow."""
    flow = mbp.gradient_flow(model, head, params, x, y, jit=False)
    rows = [r for r in flow.rows if r.layer.endswith(" Dense")][:-1]
    return [r.dy_norm for r in rows], flow


def per_layer_factor(norms) -> float:
    """Geometric mean of ||delta^l|| / ||delta^(l+1)|| over the stack."""
    return float((norms[0] / norms[-1]) ** (1 / (len(norms) - 1)))


def train(model, head, params, x, y, steps: int, lr: float):
    opt = optax.adam(lr)
    grad_fn = mbp.value_and_grad(model, head, jit=False, check=False)

    @jax.jit
    def step(params, state):
        loss, grads = grad_fn(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, losses


def accuracy(model, params, x, y) -> float:
    out, _ = model.forward(params, x)
    return float(jnp.mean(jnp.argmax(out, -1) == y))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/", help="output folder")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=150, help="Adam steps (full batch)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    dim, classes = 16, 4
    x, y = data(jax.random.key(args.seed + 1), 512, dim, classes)
    head = mbp.SoftmaxCrossEntropy()
    kinds = ["sigmoid", "tanh", "relu", "relu+residual", "relu+layernorm"]
    results = {}
    for kind in kinds:
        model = build(kind, args.depth, args.width, classes)
        params = init(model, kind, jax.random.key(args.seed), dim, args.depth)
        d0, flow0 = deltas(model, head, params, x, y)
        trained, losses = train(model, head, params, x, y, args.steps, args.lr)
        d1, _ = deltas(model, head, trained, x, y)
        results[kind] = {
            "delta_norm_init": d0, "delta_norm_trained": d1,
            "factor_per_layer_init": per_layer_factor(d0), "factor_per_layer_trained": per_layer_factor(d1),
            "first_over_last_init": d0[0] / d0[-1],
            "loss_init": losses[0], "loss_trained": losses[-1],
            "accuracy_init": accuracy(model, params, x, y), "accuracy_trained": accuracy(model, trained, x, y),
            "saturated_init": {r.layer: r.saturated for r in flow0.rows if r.saturated is not None},
        }
        print(f"{kind:15s} ||delta^1||/||delta^{args.depth}|| at init {d0[0] / d0[-1]:.2e} "
              f"(x{per_layer_factor(d0):.3f} per layer); loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    layers = np.arange(1, args.depth + 1)
    for ax, key, when in ((axes[0], "delta_norm_init", "at initialization"),
                          (axes[1], "delta_norm_trained", f"after {args.steps} Adam steps")):
        for kind in kinds:
            r = results[kind]
            fkey = "factor_per_layer_init" if key.endswith("init") else "factor_per_layer_trained"
            ax.semilogy(layers, r[key], "o-", ms=3, label=f"{kind} (x{r[fkey]:.2f}/layer)")
        ax.set_title(f"{args.depth}-layer MLP, width {args.width}: {when}")
        ax.set_xlabel("layer l (1 = next to the input)")
        ax.set_xticks(layers[::2] if args.depth > 10 else layers)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||delta^l|| = ||dL/dz^l||  (batch of 512)")
    fig.suptitle("Vanishing gradients: delta^l is a product of W^T f'(z) factors; sigmoid' <= 1/4 shrinks it "
                 "at every layer, an identity path or LayerNorm keeps it", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "vanishing_gradients.png", dpi=110)
    meta = {"depth": args.depth, "width": args.width, "steps": args.steps, "lr": args.lr, "optimizer": "adam",
            "residual": "x + W relu(x), W scaled by 1/sqrt(depth) at init", "examples": 512, "input_dim": dim,
            "classes": classes, "dtype": "float32", "jax": jax.__version__, "seconds": time.perf_counter() - t0}
    (out / "vanishing_gradients.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out / 'vanishing_gradients.png'} and .json in {meta['seconds']:.1f} s")


if __name__ == "__main__":
    main()
