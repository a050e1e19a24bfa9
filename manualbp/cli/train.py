"""``manualbp train``: train a built-in model on built-in data by manual backprop, jax.grad, or both (twin)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from manualbp.cli.args import positive_int

CHECKPOINT_FILE = "checkpoint.npz"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    from manualbp.training.zoo import DATA_NAMES, MODEL_NAMES, OPTIMIZERS

    p = subparsers.add_parser("train", help="train a model on digits/spirals/adding (manual, jax.grad, or twin)",
                              description="Train a built-in model; unset settings take the task's defaults "
                                          "(see manualbp.training.zoo).")
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--data", required=True, choices=DATA_NAMES)
    p.add_argument("--grad", default="manual", choices=["manual", "reference", "twin"],
                   help="manual backprop, jax.grad of the reference, or both in lockstep (default: manual)")
    p.add_argument("--steps", type=positive_int, help="training steps (default: the task's)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: the task's)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="optax optimizer (default: the task's)")
    p.add_argument("--batch-size", type=positive_int, help="examples per step (default: the task's)")
    p.add_argument("--clip", type=_positive_float, metavar="C",
                   help="clip gradients to global norm C (manual path: manualbp.training.clip; reference: optax's)")
    p.add_argument("--seq-len", type=positive_int, metavar="T", help="adding problem: sequence length (default 50)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0, help="seed for parameters and batch order")
    p.add_argument("--plot", metavar="OUT.png", help="write loss curves (and, in twin mode, the divergence)")
    p.add_argument("--checkpoint", metavar="DIR", help=f"save {CHECKPOINT_FILE} in DIR (atomically)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between saves (default: end)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    p.add_argument("--devices", type=positive_int, help="data-parallel over N devices (CPU: forced host devices)")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.set_defaults(func=run)
    return p


class Progress:
    """Progress on stderr: a redrawn bar on a terminal, a line per tenth of the run otherwise.

    Shows the primary path's latest training loss and metric (one host sync per call).
    """

    def __init__(self, total: int, path: str, width: int = 30, stream=None):
        self.total, self.path, self.width = total, path, width
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.next_line = 0

    def __call__(self, step: int, values: dict):
        shown = "  ".join(f"{k.split('/', 1)[1]} {v:.4g}" for k, v in values.items() if k.startswith(self.path + "/"))
        done = int(self.width * step / self.total)
        text = f"[{'#' * done}{'.' * (self.width - done)}] {step}/{self.total}  {shown}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if step == self.total else ""))
        elif step >= self.next_line or step == self.total:
            self.stream.write(text + "\n")
            self.next_line = step + self.total // 10
        self.stream.flush()


def _optimizers(args, task):
    import optax

    from manualbp.training import zoo
    from manualbp.training.clip import clip_by_global_norm

    base = zoo.optimizer(args.optimizer or task.optimizer, args.lr or task.lr)
    if args.clip is None:
        return base, base
    return optax.chain(clip_by_global_norm(args.clip), base), optax.chain(optax.clip_by_global_norm(args.clip), base)


def plot(path: str, histories: dict, divergence=None, title: str = "") -> None:
    """Loss per step of each path (log scale) and, if given, the twin divergence (max rel over parameters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = 2 if divergence is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for (name, hist), style in zip(histories.items(), ("-", "--")[:len(histories)], strict=True):
        ax.plot(np.arange(1, len(hist["loss"]) + 1), hist["loss"], style, label=f"{name} loss", alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (minibatch)")
    ax.set_title(title)
    ax.legend()
    if divergence is not None:
        ax = axes[0, 1]
        steps = np.arange(1, divergence.max_rel.shape[0] + 1)
        tiny = np.finfo(np.float64).tiny  # bitwise-equal steps show at the floor of the log axis
        ax.plot(steps, np.maximum(divergence.max_rel.max(axis=1), tiny), label="max rel (worst parameter)")
        ax.plot(steps, np.maximum(divergence.norm_rel.max(axis=1), tiny), label="norm rel (worst parameter)")
        ax.axhline(divergence.tolerance.elem, color="r", ls=":", label=f"max rel tolerance ({divergence.dtype})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("manual vs reference parameters")
        ax.set_title("twin divergence")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _metric_line(prefix: str, metric: str, value: float) -> str:
    return f"{prefix}test {metric}: {value:.4f}"


def run(args) -> int:
    """Execute ``manualbp train`` from parsed arguments; returns the exit status."""
    flags = os.environ.get("XLA_FLAGS", "")
    if args.devices and args.devices > 1 and "xla_force_host_platform_device_count" not in flags:
        # read when the CPU backend starts (if jax has not started it yet); no effect on GPU/TPU backends
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from manualbp.cli.benchmarks.timing import machine
    from manualbp.training import data as datasets
    from manualbp.training import zoo
    from manualbp.training.train import metric_name, train, train_twin

    if args.resume and not args.checkpoint:
        print("manualbp train: --resume needs --checkpoint DIR", file=sys.stderr)
        return 2
    if args.seq_len and args.data != "adding":
        print("manualbp train: --seq-len applies to --data adding only", file=sys.stderr)
        return 2
    try:
        task = zoo.task(args.model, args.data)
        dtype = jnp.dtype(args.dtype)
        data = datasets.adding(args.seq_len, dtype=dtype) if args.seq_len else task.load(dtype)
        manual_opt, reference_opt = _optimizers(args, task)
    except (ValueError, ImportError) as e:
        print(f"manualbp train: {e}", file=sys.stderr)
        return 2
    steps = args.steps or task.steps
    batch_size = args.batch_size or task.batch_size
    init_key, data_key = jax.random.split(jax.random.key(args.seed))
    # one compiled init instead of one compilation per eager op inside it
    params = jax.jit(lambda k: task.model.init(k, data.input_shape, dtype)[0])(init_key)
    common = dict(steps=steps, batch_size=batch_size, key=data_key, log_every=max(1, steps // 100),
                  on_log=Progress(steps, "reference" if args.grad == "reference" else "manual"), devices=args.devices,
                  checkpoint=os.path.join(args.checkpoint, CHECKPOINT_FILE) if args.checkpoint else None,
                  checkpoint_every=args.checkpoint_every or 0, resume=args.resume)
    t0 = time.perf_counter()
    try:
        if args.grad == "twin":
            result = train_twin(task.model, task.head, params, data, optimizer=manual_opt,
                                         reference_optimizer=reference_opt, **common)
            paths = {"manual": result.manual, "reference": result.reference}
        else:
            opt = manual_opt if args.grad == "manual" else reference_opt
            result = train(task.model, task.head, params, data, optimizer=opt, grad=args.grad, **common)
            paths = {args.grad: result}
    except ValueError as e:  # bad settings, a checkpoint of another model, too few devices
        print(f"\nmanualbp train: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    metric = metric_name(data)
    primary = next(iter(paths.values()))
    summary = {
        "model": args.model, "data": data.name, "description": task.description, "grad": args.grad,
        "steps": steps, "batch_size": batch_size, "optimizer": args.optimizer or task.optimizer,
        "lr": args.lr or task.lr, "clip": args.clip, "dtype": args.dtype, "seed": args.seed,
        "devices": args.devices or 1, "resumed_from": primary.resumed_from, "wall_s": wall,
        "test": {name: r.test[metric] for name, r in paths.items()},
        "final_loss": {name: float(r.history["loss"][-1]) for name, r in paths.items()},
        "machine": machine(),
    }
    if data.task == "regression":
        summary["baseline_mse"] = datasets.adding_baseline_mse(data)
    summary["test_extra"] = {name: zoo.extra_metrics(task, r.params, data) for name, r in paths.items()}  # e.g. sort
    if args.grad == "twin":
        summary["divergence"] = result.divergence.to_dict()
    if args.plot:
        plot(args.plot, {name: r.history for name, r in paths.items()},
             result.divergence if args.grad == "twin" else None, f"{args.model} on {data.name}")
        summary["plot"] = args.plot
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for i, (name, r) in enumerate(paths.items()):
        print(_metric_line("" if i == 0 else f"{name} ", metric, r.test[metric]))
        for extra, value in summary["test_extra"][name].items():
            print(_metric_line("" if i == 0 else f"{name} ", extra, value))
    if data.task == "regression":
        print(f"baseline (predict the mean) test mse: {summary['baseline_mse']:.4f}")
    if args.grad == "twin":
        print(result.divergence.summary())
    print(f"{steps} steps in {wall:.1f} s ({args.grad}, {args.dtype}, {summary['devices']} device(s))")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
