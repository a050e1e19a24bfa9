"""``manualbp train``: train a built-in model on built-in data by manual backprop, jax.grad, or both (twin).

Every path is checked before step 1 (exit 2 and one line); a twin verdict
of DIVERGED or a loss gone non-finite exits 1; Ctrl-C saves a last
checkpoint (with --checkpoint) and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from manualbp.cli.args import positive_int
from manualbp.cli.choices import OPTIMIZERS, TRAIN_DATA, TRAIN_MODELS
from manualbp.cli.train_output import (
    JsonErrors,
    Progress,
    dumps,
    fail,
    plot_path_error,
    positive_float,
    seed,
)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    p = subparsers.add_parser("train", help="train a model on digits/spirals/adding/sort (manual, jax.grad, or twin)",
                              description="Train a built-in model; unset settings take the task's defaults "
                                          "(see manualbp.training.zoo).")
    p.__class__ = JsonErrors  # usage errors as {"error": ...} on stdout under --json
    p.add_argument("--model", required=True, choices=TRAIN_MODELS)
    p.add_argument("--data", required=True, choices=TRAIN_DATA)
    p.add_argument("--grad", default="manual", choices=["manual", "reference", "twin"],
                   help="manual backprop, jax.grad of the reference, or both in lockstep (default: manual)")
    p.add_argument("--steps", type=positive_int, help="training steps (default: the task's)")
    p.add_argument("--lr", type=positive_float, help="learning rate, finite and > 0 (default: the task's)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optax optimizer (default: the task's)")
    p.add_argument("--batch-size", type=positive_int, help="examples per step (default: the task's)")
    p.add_argument("--clip", type=positive_float, metavar="C",
                   help="clip gradients to global norm C (manual path: manualbp.training.clip; reference: optax's)")
    p.add_argument("--seq-len", type=positive_int, metavar="T", help="adding problem: sequence length (default 50)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--compute-dtype", choices=["bfloat16", "float16"],
                   help="mixed precision: forward and backward in this dtype, parameters and optimizer in --dtype "
                        "(master weights); default: all in --dtype")
    p.add_argument("--seed", type=seed, default=0, help="seed for parameters and batch order, in [0, 2**64) (default 0)")
    p.add_argument("--plot", metavar="OUT.png", help="write loss curves (and, in twin mode, the per-step check)")
    p.add_argument("--checkpoint", metavar="DIR", help="keep the run in DIR (checkpoint.npz + history.log)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="K", help="steps between saves (default: end)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --checkpoint DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in --checkpoint DIR")
    p.add_argument("--devices", type=positive_int,
                   help="data-parallel over N devices (CPU: forced host devices); with several processes, all of theirs")
    p.add_argument("--model-parallel", type=positive_int, metavar="M",
                   help="gpt models: tensor-parallel over M devices (a mesh of devices/M x M, batch x model)")
    p.add_argument("--num-processes", type=positive_int, metavar="P",
                   help="run as one of P processes (jax.distributed), each with devices/P of the devices")
    p.add_argument("--process-id", type=int, metavar="I", help="this process's index in [0, P)")
    p.add_argument("--coordinator", metavar="HOST:PORT", default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
                   help="process 0's address, e.g. 127.0.0.1:12345 (default: $JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print the summary (or the error) as strict JSON on stdout")
    p.set_defaults(func=run)
    return p


def _usage_error(args) -> str | None:
    if (args.resume or args.overwrite or args.checkpoint_every) and not args.checkpoint:
        flag = "--resume" if args.resume else "--overwrite" if args.overwrite else "--checkpoint-every"
        return f"{flag} needs --checkpoint DIR"
    if args.resume and args.overwrite:
        return "--resume and --overwrite exclude each other"
    if args.seq_len and args.data != "adding":
        return "--seq-len applies to --data adding only"
    if args.model_parallel and args.model != "gpt":
        return "--model-parallel applies to --model gpt only (its blocks have tensor-parallel layers)"
    if args.model_parallel and (args.devices or 1) % args.model_parallel:
        return f"--model-parallel {args.model_parallel} must divide --devices ({args.devices or 1})"
    if args.num_processes:
        if args.process_id is None or not 0 <= args.process_id < args.num_processes:
            return f"--num-processes {args.num_processes} needs --process-id in [0, {args.num_processes})"
        if not args.coordinator:
            return "--num-processes needs --coordinator HOST:PORT (or $JAX_COORDINATOR_ADDRESS)"
        if (args.devices or 1) % args.num_processes:
            return f"--devices {args.devices or 1} must be divisible by --num-processes {args.num_processes}"
    elif args.process_id is not None:
        return "--process-id needs --num-processes"
    return plot_path_error(args.plot) if args.plot else None


# the library's words for what the command line calls a flag (its messages name its own arguments)
_CLI_WORDS = (("drop resume=True", "drop --resume"), ("resume=True", "--resume"), ("overwrite=True", "--overwrite"),
              ("another key", "another --seed"), ("the same key", "the same --seed"),
              ("lower the learning rate", "lower --lr"), ("clip the gradients", "clip the gradients (--clip C)"))


def cli_words(message: str) -> str:
    """``message`` with the library's argument names replaced by the command's flags."""
    for api, flag in _CLI_WORDS:
        message = message.replace(api, flag)
    return message


def _force_host_devices(devices):
    """Ask the CPU backend for ``devices`` devices (read when jax starts it; no effect on GPU/TPU backends)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if devices and devices > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    if devices and devices > 1:
        # XLA's CPU thread pool defaults to one thread per core; with more forced devices than that, devices
        # blocked in a collective can starve the one they wait for (a deadlock measured on 2 cores, 4 devices)
        os.environ.setdefault("NPROC", str(max(os.cpu_count() or 1, 2 * devices)))


def _seed_keys(seed_value: int):
    """(init key, data key) from a seed of up to 64 bits (jax.random.key keeps only 32 without x64)."""
    import jax
    import numpy as np

    words = np.array([seed_value >> 32, seed_value & 0xFFFFFFFF], np.uint32)
    return jax.random.split(jax.random.wrap_key_data(words, impl="threefry2x32"))


def _optimizers(args, task):
    import optax

    from manualbp.training import zoo
    from manualbp.training.clip import clip_by_global_norm

    base = zoo.optimizer(args.optimizer or task.optimizer, args.lr or task.lr)
    if args.clip is None:
        return base, base
    return optax.chain(clip_by_global_norm(args.clip), base), optax.chain(optax.clip_by_global_norm(args.clip), base)


def run(args) -> int:
    """Execute ``manualbp train`` from parsed arguments; returns the exit status."""
    error = _usage_error(args)
    if error:
        return fail(args, error)
    processes = args.num_processes or 1
    _force_host_devices((args.devices or 1) // processes)  # each process's own
    import jax

    from manualbp.training import parallel

    if processes > 1:
        try:
            parallel.initialize(args.coordinator, processes, args.process_id)
        except (ValueError, RuntimeError) as e:
            return fail(args, f"cannot join the run of {processes} processes: {e}")

    if args.dtype == "float64" or args.grad == "twin":
        # float64 arrays; and a float32 twin run measures the reference's own error against float64 where a
        # step exceeds the fixed tolerance (manualbp.training.twin.measures_own_error); float32 arrays stay float32
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from manualbp.cli.train_summary import plot, summary, text
    from manualbp.training import data as datasets
    from manualbp.training import zoo
    from manualbp.training.checkpoint import CheckpointError
    from manualbp.training.loop import PeerLost, TrainingInterrupted
    from manualbp.training.train import NonFiniteError, train, train_twin

    try:
        mesh = parallel.make_mesh(args.devices or 1, model=args.model_parallel) if args.model_parallel else None
        task = zoo.task(args.model, args.data, mesh=mesh)
        dtype = jnp.dtype(args.dtype)
        data = datasets.adding(args.seq_len, dtype=dtype) if args.seq_len else task.load(dtype)
        manual_opt, reference_opt = _optimizers(args, task)
    except (ValueError, ImportError) as e:
        return fail(args, str(e))
    steps, batch_size = args.steps or task.steps, args.batch_size or task.batch_size
    init_key, data_key = _seed_keys(args.seed)
    # one compiled init instead of one compilation per eager op inside it
    params = jax.jit(lambda k: task.model.init(k, data.input_shape, dtype)[0])(init_key)
    settings = {"lr": args.lr or task.lr, "seed": args.seed, "optimizer": args.optimizer or task.optimizer,
                "clip": args.clip}
    progress = Progress(steps, "reference" if args.grad == "reference" else "manual")
    common = dict(steps=steps, batch_size=batch_size, key=data_key, log_every=max(1, steps // 100), on_log=progress,
                  devices=None if mesh is not None else args.devices, checkpoint=args.checkpoint,
                  checkpoint_every=args.checkpoint_every or 0, resume=args.resume, overwrite=args.overwrite, settings=settings,
                  compute_dtype=args.compute_dtype)
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
    except TrainingInterrupted as e:
        saved = f"; checkpoint saved in {args.checkpoint} (continue with --resume)" if e.saved else \
            "; nothing saved (no --checkpoint)"
        return fail(args, f"interrupted after step {e.step}{saved}", 130)
    except NonFiniteError as e:
        return fail(args, cli_words(str(e)), 1)
    except PeerLost as e:
        # jax's distributed runtime cannot shut down without the lost process (it would wait out its heartbeat
        # timeout, then abort): report, and end this process now with the status of a failed run
        fail(args, str(e), 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except (CheckpointError, ValueError) as e:  # bad settings, a checkpoint that cannot be used, too few devices
        return fail(args, cli_words(str(e)))
    finally:
        progress.close()
    out = summary(args, task, data, paths, result if args.grad == "twin" else None, time.perf_counter() - t0)
    if args.plot and jax.process_index() == 0:
        plot(args.plot, {name: r.history for name, r in paths.items()},
             result.divergence if args.grad == "twin" else None, f"{args.model} on {data.name}")
    print(dumps(out) if args.json else text(out, result.divergence if args.grad == "twin" else None))
    return 0 if out["ok"] else 1
