"""Command line: ``manualbp check``, ``manualbp bench``, ``manualbp train`` (and ``python -m manualbp ...``)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHES = {
    "mlp": "manualbp.cli.benchmarks.mlp",
    "cnn": "manualbp.cli.benchmarks.cnn",
    "recurrent": "manualbp.cli.benchmarks.recurrent",  # RNN and LSTM
}


def _check(args) -> int:
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import manualbp as mbp
    from manualbp.models import MODELS, get

    names = sorted(MODELS) if args.model == "all" else [args.model]
    dtype = jnp.dtype(args.dtype)
    reports = []
    for i, name in enumerate(names):
        builtin = get(name)
        kp, kb = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i))
        params, _ = builtin.model.init(kp, builtin.input_shape, dtype)
        x, y, mask = builtin.make_batch(kb, args.batch_size, dtype)
        report = mbp.compare(builtin.model, builtin.head, params, x, y, mask,
                             title=f"{name}: {builtin.description}")
        reports.append((name, report))
        if args.gradcheck:
            reports.append((f"{name} (finite differences)",
                            mbp.gradcheck(builtin.model, builtin.head, params, x, y, mask, k=4)))
    ok = all(r.ok for _, r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "dtype": args.dtype, "seed": args.seed,
                          "reports": {name: r.to_dict() for name, r in reports}}, indent=2))
    else:
        for _, report in reports:
            print(report)
            print()
        print(("PASS" if ok else "FAIL") + f": {sum(r.ok for _, r in reports)} of {len(reports)} reports pass "
              f"({', '.join(name + (' ok' if r.ok else ' FAILED') for name, r in reports)})")
    return 0 if ok else 1


def _bench(args) -> int:
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from manualbp.models import MODELS

    parser = argparse.ArgumentParser(prog="manualbp", description="Hand-written backprop in JAX, checked against jax.grad.")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="compare manual backprop with jax.grad, layer by layer, on built-in models")
    check.add_argument("--model", default="all", choices=["all", *sorted(MODELS)], help="built-in model (default: all)")
    check.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    check.add_argument("--seed", type=int, default=0, help="seed for parameters and data")
    check.add_argument("--batch-size", type=_positive_int, default=4)
    check.add_argument("--gradcheck", action="store_true", help="also compare with finite differences (float64)")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.set_defaults(func=_check)

    bench = sub.add_parser("bench", help="time manual backprop against jax.grad of the reference (interleaved, medians)")
    bench.add_argument("--model", default="all", choices=["all", *sorted(BENCHES)])
    bench.add_argument("--repeats", type=_positive_int, default=30)
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)

    from manualbp.cli.train import register as register_train

    register_train(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
