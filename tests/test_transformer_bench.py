"""The attention benchmark runs end to end at a tiny length, and its memory is XLA's accounting."""

import math

import jax.numpy as jnp

from manualbp.cli.benchmarks import attention, memory
from manualbp.cli.benchmarks.timing import machine


def test_attention_benchmark_row_and_table():
    row = attention._one(16, repeats=1)
    assert row["T"] == 16
    for who in ("manual", "jax.grad"):
        m = row["memory"][who]
        assert m["peak"] == m["arguments"] + m["outputs"] + m["temp"] - m["alias"]
        # the step's arguments are the parameters, x and y: at least x and y, (8, 16, 128) float32 each
        assert m["arguments"] >= 2 * 8 * 16 * 128 * 4
        assert math.isfinite(row["times"][who]["median_s"]) and row["times"][who]["median_s"] > 0
    assert row["memory_ratio"] == row["memory"]["manual"]["peak"] / row["memory"]["jax.grad"]["peak"]
    table = attention.markdown({"config": {"B": 8, "D": 128, "heads": 4, "repeats": 1}, "machine": machine(), "rows": [row]})
    assert "| 16 | manual |" in table and "| 16 | jax.grad |" in table


def test_compiled_memory_counts_arguments_and_outputs():
    m = memory.compiled_memory(lambda a: a * 2, jnp.zeros((256, 256), jnp.float32))
    assert m["arguments"] == m["outputs"] == 256 * 256 * 4
