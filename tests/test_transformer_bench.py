"""The attention benchmark runs end to end at a tiny length, with a kernel per manual contender, and its memory is XLA's
accounting."""

import math

import jax.numpy as jnp

from manualbp.cli.benchmarks import attention, memory
from manualbp.cli.benchmarks.timing import machine


def test_attention_benchmark_row_and_table():
    row = attention._one(16, repeats=1, kernels=("auto", "batched"), batch=2)
    assert row["T"] == 16 and set(row["times"]) == {"manual", "manual[batched]", "jax.grad"}
    for who in row["times"]:
        m = row["memory"][who]
        assert m["peak"] == m["arguments"] + m["outputs"] + m["temp"] - m["alias"]
        # the step's arguments are the parameters, x and y: at least x and y, (2, 16, 128) float32 each
        assert m["arguments"] >= 2 * 2 * 16 * 128 * 4
        assert math.isfinite(row["times"][who]["median_s"]) and row["times"][who]["median_s"] > 0
    for who in ("manual", "manual[batched]"):
        assert row["memory_ratio"][who] == row["memory"][who]["peak"] / row["memory"]["jax.grad"]["peak"]
    table = attention.markdown({"config": {"B": 2, "D": 128, "heads": 4, "repeats": 1, "dtypes": ("float32",)},
                                "machine": machine(), "rows": [row]})
    assert "| float32 | 16 | manual |" in table and "| float32 | 16 | manual[batched] |" in table
    assert "| float32 | 16 | jax.grad |" in table and "manual[batched] time **" in table


def test_compiled_memory_counts_arguments_and_outputs():
    m = memory.compiled_memory(lambda a: a * 2, jnp.zeros((256, 256), jnp.float32))
    assert m["arguments"] == m["outputs"] == 256 * 256 * 4
