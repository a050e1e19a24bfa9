"""Benchmarks run by ``manualbp bench``: each module has ``run(repeats) -> dict`` and ``markdown(result) -> str``.

Every benchmark interleaves its contenders in one process (A B A B ...),
reports medians and ratios, and records the machine and jax version.
"""
