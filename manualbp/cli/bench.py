"""``manualbp bench``: manual backprop against jax.grad of the reference, interleaved, medians and ratios."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from manualbp.cli.args import positive_int

BENCHES = {
    "mlp": "manualbp.cli.benchmarks.mlp",
    "cnn": "manualbp.cli.benchmarks.cnn",
    "recurrent": "manualbp.cli.benchmarks.recurrent",  # RNN, LSTM and GRU
    "conv-layers": "manualbp.cli.benchmarks.conv_layers",  # Conv1D and ConvTranspose2D
    "attention": "manualbp.cli.benchmarks.attention",  # one attention layer, T = 128 ... 1024
    "gpt": "manualbp.cli.benchmarks.gpt",
}


def register(subparsers):
    """Add the ``bench`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    bench = subparsers.add_parser("bench", help="time manual backprop against jax.grad of the reference (interleaved, medians)",
                                  description="Time jitted manual value_and_grad against jitted jax.value_and_grad of "
                                              "the reference, interleaved in one process; print medians, ratios and "
                                              "compile times.",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--model", default="all", choices=["all", *sorted(BENCHES)],
                       help="which benchmark: the MLP (with the peak jnp.dot throughput), the CNN, RNN/LSTM/GRU "
                            "(recurrent), Conv1D and ConvTranspose2D (conv-layers), one attention layer over T "
                            "(attention), or a 4-block GPT (gpt)")
    bench.add_argument("--repeats", type=positive_int, default=30, help="timed calls of each contender (interleaved)")
    bench.add_argument("--kernels", type=_kernels, default=("auto",), metavar="K[,K...]",
                       help="attention kernels of the manual step, from auto, loop, batched, pallas (attention: one "
                            "manual contender each; gpt: the first)")
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                       help="parameters and data of the attention and gpt benchmarks")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown tables")
    bench.set_defaults(func=run)
    return bench


def _kernels(text: str) -> tuple:
    from manualbp.layers.flash import KERNELS

    names = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in names if k not in KERNELS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected attention kernels from {', '.join(KERNELS)}, got {text!r}")
    return names


def options(name: str, args) -> dict:
    """The keyword arguments of benchmark ``name``'s ``run`` that the command line sets besides ``repeats``."""
    kernels, dtype = getattr(args, "kernels", ("auto",)), getattr(args, "dtype", "float32")
    if name == "attention":
        return {"kernels": kernels, "dtypes": (dtype,)}
    if name == "gpt":
        return {"kernel": kernels[0], "dtype": dtype}
    return {}


def run(args) -> int:
    """Execute ``manualbp bench`` from parsed arguments; returns the exit status."""
    names = sorted(BENCHES) if args.model == "all" else [args.model]
    out = []
    for name in names:
        try:
            module = importlib.import_module(BENCHES[name])
        except ModuleNotFoundError:
            print(f"manualbp bench: benchmark {name!r} is not available", file=sys.stderr)
            return 2
        result = module.run(repeats=args.repeats, **options(name, args))
        out.append((result, module.markdown(result)))
    if args.json:
        print(json.dumps([r for r, _ in out], indent=2, default=str))
    else:
        from manualbp.cli.benchmarks.timing import machine

        m = machine()
        print(f"Measured with jax {m['jax']} on {m['backend']} ({m['device']}, {m['cpu_count']} cores, "
              f"{m['machine']}, Python {m['python']}, {m['allocator']}, 1-min load average "
              f"{m['load_average_1min']:.1f}).\n")
        print("\n\n".join(md for _, md in out))
    return 0


