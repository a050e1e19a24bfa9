"""Timing helpers shared by every benchmark: interleaved A/B runs, medians, compile times.

Contenders are run alternately (A B A B ...) in one process so that noise
from a shared machine hits both alike; figures are medians over repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import numpy as np


def block(tree):
    """Wait for every array in ``tree`` (JAX dispatch is asynchronous)."""
    return jax.tree_util.tree_map(lambda v: v.block_until_ready() if hasattr(v, "block_until_ready") else v, tree)


def compile_time(fn, *args) -> float:
    """Seconds for the first call of a fresh jitted ``fn`` (trace + compile + one run)."""
    t0 = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t0


def interleaved(contenders: dict, args: tuple, *, repeats: int = 30, warmup: int = 3) -> dict:
    """Median seconds per call of each ``contenders[name](*args)``, run alternately.

    Returns {name: {"median_s": ..., "min_s": ..., "p10_s": ..., "p90_s": ..., "samples": n}}.
    """
    for _ in range(warmup):
        for fn in contenders.values():
            block(fn(*args))
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            block(fn(*args))
            samples[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(s),
            "min_s": min(s),
            "p10_s": float(np.percentile(s, 10)),
            "p90_s": float(np.percentile(s, 90)),
            "samples": len(s),
        }
        for name, s in samples.items()
    }


def machine() -> dict:
    """What the figures were measured on."""
    dev = jax.devices()[0]
    malloc = "jemalloc/tcmalloc (LD_PRELOAD)" if "malloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    return {
        "jax": jax.__version__,
        "backend": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "allocator": malloc,
        "load_average_1min": os.getloadavg()[0],  # other processes on a shared machine skew every figure
    }
