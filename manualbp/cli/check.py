"""``manualbp check``: manual backprop vs jax.grad, layer by layer, on the built-in models.

A first check is mostly XLA compiling small programs, each run once. So
``check`` asks XLA's CPU backend to compile cheaply (``xla_flags``: the
cheapest optimization level, the older fusion emitters and one LLVM module
per program, unless ``XLA_FLAGS`` sets them; it changes how long compiling takes, not what is
compared, since both sides are compiled alike) and keeps the compiled
programs in jax's persistent compilation cache, in the user's cache
directory, so that the next run skips compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from manualbp.cli.args import positive_int
from manualbp.cli.choices import CHECK_MODELS, VERDICTS
from manualbp.cli.xla_flags import use_fast_compile

CACHE_ENV = "MANUALBP_CACHE_DIR"


def default_cache_dir() -> str:
    """Where compiled programs are kept: $MANUALBP_CACHE_DIR (empty: no cache), else the platform's user cache dir.

    Linux and others: $XDG_CACHE_HOME/manualbp/xla (default ~/.cache/manualbp/xla); macOS:
    ~/Library/Caches/manualbp/xla; Windows: %LOCALAPPDATA%/manualbp/xla.
    """
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV]
    if sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(root / "manualbp" / "xla")


def register(subparsers):
    """Add the ``check`` subcommand to ``subparsers`` (an ``argparse`` subparsers action)."""
    check = subparsers.add_parser(
        "check", help="compare manual backprop with jax.grad, layer by layer, on built-in models",
        description="Run every built-in model (or one) forward and backward by hand and through jax.grad of the "
                    "reference, and print one row per layer and quantity. Exit status 0 only if every row passes.",
        epilog=f"Compiled programs are cached in --cache-dir (default from ${CACHE_ENV}, else the user cache dir), "
               "so a second run skips compiling; delete the folder to reclaim the space. check also adds "
               "--xla_backend_optimization_level=0, --xla_cpu_use_fusion_emitters=false and "
               "--xla_cpu_parallel_codegen_split_count=1 to XLA_FLAGS unless it sets them: it compiles many small "
               "programs that each run once.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    check.add_argument("--model", default="all", choices=["all", *CHECK_MODELS], help="built-in model to check")
    check.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                       help="precision of parameters and data (float64 turns on jax's 64-bit mode; bfloat16/float16: "
                            "initialized in float32, then rounded)")
    check.add_argument("--verdict", default="auto", choices=["auto", *VERDICTS],
                       help="how rows are judged: auto = error-model below float32, conditioning above; fixed = the "
                            "fixed tolerances alone; error-model = manual's error vs a float64 truth against jax.grad's "
                            "own (not for float64)")
    check.add_argument("--seed", type=int, default=0, help="seed for parameters and data")
    check.add_argument("--batch-size", type=positive_int, default=4, help="examples per batch")
    check.add_argument("--gradcheck", action="store_true",
                       help="also compare with central finite differences in float64 (4 random directions)")
    check.add_argument("--json", action="store_true", help="print the reports as one JSON object instead of tables")
    check.add_argument("--cache-dir", default=default_cache_dir(),
                       help="persistent XLA compilation cache ('' for none)")
    check.add_argument("--no-cache", dest="cache_dir", action="store_const", const="", default=argparse.SUPPRESS,
                       help="compile without the persistent cache (same as --cache-dir '')")
    check.set_defaults(func=run)
    return check


def configure_xla(cache_dir: str) -> str:
    """XLA flags for cheap compiling (``xla_flags``) and the persistent cache; returns the cache dir in use ('' if none).

    Takes effect only before jax compiles its first program (as in a fresh ``manualbp check``).
    """
    use_fast_compile()
    import jax

    if not cache_dir:
        return ""
    try:
        os.makedirs(cache_dir, exist_ok=True)
        if not os.access(cache_dir, os.W_OK):
            raise PermissionError(f"{cache_dir} is not writable")
    except OSError as e:
        print(f"manualbp check: not caching compiled programs ({e})", file=sys.stderr)
        return ""
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # check's programs each compile in < 1 s
    return cache_dir


def legend(tolerance, dtype: str, rule) -> str:
    """Three lines that explain the report's columns, the rule its rows were judged by (``rule``), and how to read them."""
    from manualbp.verify.tolerances import ERROR_MODEL, Rule

    fixed = f"ok = norm rel <= {tolerance.norm:.0e} and max rel <= {tolerance.elem:.0e} ({dtype})"
    if rule is Rule.ERROR_MODEL:
        ok = (f"ok (err model) = manual's error against a float64 truth t at most {ERROR_MODEL.k:g} x jax.grad's own "
              f"error plus {ERROR_MODEL.rounding:g} eps ||t|| ({dtype}: no fixed tolerance separates rounding from a "
              "wrong rule)")
    elif rule is Rule.CONDITIONING:
        ok = (f"{fixed}; ok (cond) = where jax.grad's own rounding error makes that unreachable, within "
              f"{ERROR_MODEL.conditioning:g} x that error")
    else:
        ok = fixed
    return "\n".join([
        "legend: max|diff| = max |manual - jax.grad|;  max rel = the largest |manual - jax.grad| / |jax.grad| over "
        "entries above 1e-3 x max |jax.grad|",
        f"        norm rel = ||manual - jax.grad|| / max(||manual||, ||jax.grad||);  exact = bitwise equal;  {ok}",
        "        rows run in the order the pass computes them (forward, loss, then backward from the last layer): "
        "the first FAIL is where an error enters",
    ])


def run(args) -> int:
    """Execute ``manualbp check`` from parsed arguments; returns the exit status."""
    start = time.perf_counter()
    cache_dir = configure_xla(args.cache_dir)
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
        rule = resolve_verdict(args.verdict, dtype)
    except ValueError as e:
        print(f"manualbp check: {e}", file=sys.stderr)
        return 2
    low = dtype.itemsize < 4  # initialized in float32 and rounded: the point is then exactly representable in dtype

    def check(i, name):
        builtin = get(name)
        kp, kb = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), i))
        params, _ = builtin.model.init(kp, builtin.input_shape, jnp.float32 if low else dtype)
        x, y, mask = builtin.make_batch(kb, args.batch_size, jnp.float32 if low else dtype)
        if low:
            params, x, mask = jax.tree_util.tree_map(
                lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v, (params, x, mask))
        out = [(name, builtin.description,
                mbp.compare(builtin.model, builtin.head, params, x, y, mask, verdict=args.verdict,
                            title=f"{name}: {builtin.description}"))]
        if args.gradcheck:
            out.append((f"{name} (finite differences)", "the same model and batch, float64",
                        mbp.gradcheck(builtin.model, builtin.head, params, x, y, mask, k=4)))
        return out

    # the models are independent: two at a time, so that one compiles (C++, no GIL) while another traces
    with ThreadPoolExecutor(max_workers=min(2, len(names))) as pool:
        done = list(pool.map(lambda item: check(*item), enumerate(names)))
    reports = [r for out in done for r in out]  # (name, description, report), in the models' order
    ok = all(r.ok for _, _, r in reports)
    status = "PASS" if ok else "FAIL" if any(r.status == "FAIL" for _, _, r in reports) else "INCONCLUSIVE"
    if args.json:
        print(json.dumps({"ok": ok, "status": status, "dtype": args.dtype, "verdict": args.verdict, "seed": args.seed,
                          "reports": {name: r.to_dict() for name, _, r in reports}}, indent=2))
        return 0 if ok else 1
    for _, _, report in reports:
        print(report)
        print()
    width = max(len(name) for name, _, _ in reports)
    for name, description, report in reports:
        fail = report.first_failure
        verdict = (f"{report.status}  {len(report.rows)} rows" if fail is None
                   else f"FAIL  first failing row: {fail.layer} {fail.quantity}")
        print(f"{name.ljust(width)}  {verdict}  ({description})")
    print(legend(reports[0][2].tolerance, args.dtype, rule))
    cached = f"; compiled programs cached in {cache_dir}" if cache_dir else ""
    print(f"{status}: {sum(r.ok for _, _, r in reports)} of {len(reports)} reports pass, "
          f"in {time.perf_counter() - start:.1f} s{cached}")
    return 0 if ok else 1
