"""Command line: ``manualbp check``, ``manualbp bench``, ``manualbp train`` (and ``python -m manualbp ...``).

Each subcommand lives in its own module with ``register(subparsers)`` and ``run(args) -> exit status``.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from manualbp.cli import bench, check, train

    parser = argparse.ArgumentParser(prog="manualbp", description="Hand-written backprop in JAX, checked against jax.grad.")
    sub = parser.add_subparsers(dest="command", required=True)
    check.register(sub)
    bench.register(sub)
    train.register(sub)
    return parser


def main(argv=None) -> int:
    from manualbp.cli.xla_log import slow_compile_banner_filtered

    args = build_parser().parse_args(argv)
    with slow_compile_banner_filtered():  # XLA's "Very slow compile?" banner is not the user's error
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
