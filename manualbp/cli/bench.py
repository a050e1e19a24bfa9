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
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of markdown tables")
    bench.set_defaults(func=run)
    return bench


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
        result = module.run(repeats=args.repeats)
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


