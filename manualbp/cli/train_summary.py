"""The summary of a ``manualbp train`` run: as a dict (JSON), as text, and as a plot."""

from __future__ import annotations


def summary(args, task, data, paths: dict, twin, wall_s: float) -> dict:
    """Everything the run reports; ``ok`` is False when a twin run's verdict is DIVERGED."""
    from manualbp.cli.benchmarks.timing import machine
    from manualbp.training import data as datasets
    from manualbp.training import zoo
    from manualbp.training.train import metric_name

    metric = metric_name(data)
    primary = next(iter(paths.values()))
    out = {
        "ok": twin is None or twin.divergence.ok,
        "model": args.model, "data": data.name, "description": task.description, "grad": args.grad,
        "steps": primary.steps, "resumed_from": primary.resumed_from, "batch_size": args.batch_size or task.batch_size,
        "optimizer": args.optimizer or task.optimizer, "lr": args.lr or task.lr, "clip": args.clip, "dtype": args.dtype,
        "compute_dtype": args.compute_dtype or args.dtype,
        "seed": args.seed, "devices": args.devices or 1, "model_parallel": args.model_parallel or 1,
        "processes": args.num_processes or 1, "wall_s": wall_s, "metric": metric,
        "test": {name: {metric: r.test[metric], **zoo.extra_metrics(task, r.params, data, r.stats)}  # e.g. sort: lists sorted
                 for name, r in paths.items()},
        "final_loss": {name: float(r.history["loss"][-1]) if len(r.history["loss"]) else None
                       for name, r in paths.items()},
        "machine": machine(),
    }
    if data.task == "regression":
        out["baseline_mse"] = datasets.adding_baseline_mse(data)
    if twin is not None:
        out["divergence"] = twin.divergence.to_dict()
    if args.plot:
        out["plot"] = args.plot
    return out


def text(out: dict, divergence) -> str:
    """The human-readable lines: test metrics per path, baseline, twin verdict, steps and time."""
    lines = [f"{'' if i == 0 else name + ' '}test {metric}: {value:.4f}"
             for i, (name, values) in enumerate(out["test"].items()) for metric, value in values.items()]
    if "baseline_mse" in out:
        lines.append(f"baseline (predict the mean) test mse: {out['baseline_mse']:.4f}")
    if divergence is not None:
        lines.append(divergence.summary())
    done = out["steps"] - out["resumed_from"]
    resumed = f", resumed at step {out['resumed_from']}" if out["resumed_from"] else ""
    where = f"{out['devices']} device(s)"
    if out["model_parallel"] > 1:
        where += f" as {out['devices'] // out['model_parallel']} (batch) x {out['model_parallel']} (model)"
    if out["processes"] > 1:
        where += f" in {out['processes']} processes"
    dtype = out["dtype"] if out["compute_dtype"] == out["dtype"] else f"{out['compute_dtype']} compute, {out['dtype']} weights"
    lines.append(f"{done} steps in {out['wall_s']:.1f} s ({out['grad']}, {dtype}, {where}{resumed})")
    if "plot" in out:
        lines.append(f"plot written to {out['plot']}")
    return "\n".join(lines)


def plot(path: str, histories: dict, divergence=None, title: str = "") -> None:
    """Loss per step of each path (log scale) and, in twin mode, the per-step check and the trajectories' drift."""
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
        divergence.plot(axes[0, 1])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
