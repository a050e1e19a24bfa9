"""The two contenders every benchmark times: manual ``value_and_grad`` and ``jax.value_and_grad`` of the reference."""

from __future__ import annotations

import jax

from manualbp.backprop import loss_and_grads
from manualbp.cli.benchmarks.memory import compiled_memory
from manualbp.cli.benchmarks.timing import compile_time
from manualbp.reference import value_and_grad as reference_step


def value_and_grad_steps(model, head) -> dict:
    """{"manual", "jax.grad"}: ``(params, x, y) -> (loss, grads)``, fresh jits (the first call measures trace + compile)."""
    return {
        "manual": jax.jit(lambda p, x, y: loss_and_grads(model, head, p, x, y)[:2]),
        "jax.grad": jax.jit(reference_step(model, head, jit=False)),
    }


def compile_and_memory(contenders: dict, *args) -> tuple[dict, dict]:
    """Each contender's first-call (trace + compile) seconds and its compiled step's memory, at ``args``."""
    compile_s = {name: compile_time(fn, *args) for name, fn in contenders.items()}
    memory = {name: compiled_memory(fn, *args) for name, fn in contenders.items()}
    return compile_s, memory
