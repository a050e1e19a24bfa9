"""Peak memory of a compiled step, from XLA's own memory analysis (deterministic: no timing, no sampling).

``jax.jit(f).lower(*args).compile().memory_analysis()`` reports the sizes
XLA's buffer assignment gives the executable: its arguments, its outputs,
and one preallocated block of temporaries whose size already accounts for
which buffers are alive at the same time (the heap simulator's peak). So

    peak = arguments + outputs + temporaries - aliased (donated) bytes

is what one call needs at its high-water mark. It is computed, not
measured: the allocator's own overhead (e.g. glibc mmapping blocks above
32 MiB afresh each call) is not in it, and a function that is not jitted as
a whole cannot be analysed this way.
"""

from __future__ import annotations

import jax

MIB = 2**20


def compiled_memory(fn, *args) -> dict:
    """Bytes of the compiled ``fn(*args)``: {"temp", "arguments", "outputs", "alias", "peak"} (peak as above).

    ``fn`` is a function to jit (or already jitted); ``args`` arrays or
    ``jax.ShapeDtypeStruct``s (nothing is allocated or run).
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return executable_memory(jitted.lower(*args).compile())


def executable_memory(compiled) -> dict:
    """``compiled_memory`` of an executable already compiled (``jax.jit(f).lower(...).compile()``)."""
    m = compiled.memory_analysis()
    out = {"temp": m.temp_size_in_bytes, "arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes}
    out["peak"] = out["arguments"] + out["outputs"] + out["temp"] - out["alias"]
    return out


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f}"
