"""``manualbp check``: manual backprop vs jax.grad, layer by layer, on the built-in models."""

from __future__ import annotations

import json
import sys

from manualbp.cli.args import positive_int


def register(subparsers):
    """Add the ``check`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    from manualbp.models import MODELS
    from manualbp.verify.tolerances import VERDICTS

    check = subparsers.add_parser("check", help="compare manual backprop with jax.grad, layer by layer, on built-in models")
    check.add_argument("--model", default="all", choices=["all", *sorted(MODELS)], help="built-in model (default: all)")
    check.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                       help="precision of params and data (bfloat16/float16: initialized in float32, then rounded)")
    check.add_argument("--verdict", default="auto", choices=["auto", *VERDICTS],
                       help="how rows are judged: auto = error-model below float32, conditioning above; fixed = the "
                            "fixed tolerances alone; error-model = manual's error vs a float64 truth against jax.grad's "
                            "own (not for float64)")
    check.add_argument("--seed", type=int, default=0, help="seed for parameters and data")
    check.add_argument("--batch-size", type=positive_int, default=4)
    check.add_argument("--gradcheck", action="store_true", help="also compare with finite differences (float64)")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")
    check.set_defaults(func=run)
    return check


def run(args) -> int:
    """Execute ``manualbp check`` from parsed arguments; returns the exit status."""
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import manualbp as mbp
    from manualbp.models import MODELS, get
    from manualbp.verify.tolerances import resolve_verdict

    names = sorted(MODELS) if args.model == "all" else [args.model]
    dtype = jnp.dtype(args.dtype)
    try:
        resolve_verdict(args.verdict, dtype)
    except ValueError as e:
        print(f"manualbp check: {e}", file=sys.stderr)
        return 2
    low = dtype.itemsize < 4  # initialized in float32 and rounded: the point is then exactly representable in dtype
    reports = []
    for i, name in enumerate(names):
        builtin = get(name)
        kp, kb = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i))
        params, _ = builtin.model.init(kp, builtin.input_shape, jnp.float32 if low else dtype)
        x, y, mask = builtin.make_batch(kb, args.batch_size, jnp.float32 if low else dtype)
        if low:
            params, x, mask = jax.tree_util.tree_map(
                lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, (params, x, mask))
        report = mbp.compare(builtin.model, builtin.head, params, x, y, mask, verdict=args.verdict,
                             title=f"{name}: {builtin.description}")
        reports.append((name, report))
        if args.gradcheck:
            reports.append((f"{name} (finite differences)",
                            mbp.gradcheck(builtin.model, builtin.head, params, x, y, mask, k=4)))
    ok = all(r.ok for _, r in reports)
    status = "PASS" if ok else "FAIL" if any(r.status == "FAIL" for _, r in reports) else "INCONCLUSIVE"
    if args.json:
        print(json.dumps({"ok": ok, "status": status, "dtype": args.dtype, "verdict": args.verdict, "seed": args.seed,
                          "reports": {name: r.to_dict() for name, r in reports}}, indent=2))
    else:
        for _, report in reports:
            print(report)
            print()
        print(f"{status}: {sum(r.ok for _, r in reports)} of {len(reports)} reports pass "
              f"({', '.join(name + (' ok' if r.ok else ' ' + r.status) for name, r in reports)})")
    return 0 if ok else 1


