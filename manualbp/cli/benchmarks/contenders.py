"""The two contenders every benchmark times: manual ``value_and_grad`` and ``jax.value_and_grad`` of the reference."""

from __future__ import annotations

import time

import jax

from manualbp.backprop import loss_and_grads
from manualbp.cli.benchmarks.memory import executable_memory
from manualbp.cli.benchmarks.timing import block
from manualbp.reference import value_and_grad as reference_step


def value_and_grad_steps(model, head) -> dict:
    """{"manual", "jax.grad"}: ``(params, x, y) -> (loss, grads)``, fresh jits (the first call measures trace + compile)."""
    return {
        "manual": jax.jit(lambda p, x, y: loss_and_grads(model, head, p, x, y)[:2]),
        "jax.grad": jax.jit(reference_step(model, head, jit=False)),
    }


def compile_and_memory(contenders: dict, *args) -> tuple[dict, dict, dict]:
    """Each contender compiled once, at ``args``: (seconds to trace, compile and run it once, its memory (XLA's
    analysis of that executable), the compiled steps). Time the compiled steps: a jitted function's first call
    would compile it a second time (``lower().compile()`` and a call keep separate caches)."""
    compile_s, memory, compiled = {}, {}, {}
    for name, fn in contenders.items():
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        t0 = time.perf_counter()
        compiled[name] = jitted.lower(*args).compile()
        block(compiled[name](*args))
        compile_s[name] = time.perf_counter() - t0
        memory[name] = executable_memory(compiled[name])
    return compile_s, memory, compiled
