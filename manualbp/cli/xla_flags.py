"""XLA flags for a process that mostly compiles small programs, each run once (``manualbp check``, the tests).

Such a process spends most of its time in XLA's CPU compiler, not running
code, so three flags that trade generated-code speed for compile speed pay:

- ``--xla_backend_optimization_level=0``: LLVM's cheapest optimization level;
- ``--xla_cpu_use_fusion_emitters=false``: XLA CPU's older elemental emitters for
  fused elementwise code instead of its MLIR fusion emitters. Measured on 2 CPU
  cores, jax 0.10.2: a cold ``manualbp check --model all`` 11.5 -> 5.5 s wall,
  ``tests/test_gru.py`` 36.0 -> 22.7 s of compiling (531 programs);
- ``--xla_cpu_parallel_codegen_split_count=1``: one LLVM module per program, not
  a module split in parts compiled on a thread pool. The programs are small,
  and splitting and scheduling the parts cost more than they save: on top of
  the two flags above, 83 mutation-test programs 8.9 -> 6.7 s of compiling
  (median of 3), the test suite 227 -> 214 s wall on 2 cores.

Each changes how a program is compiled, not what it computes: in ``check``
the manual and the jax.grad side are compiled alike, and no tolerance
depends on them. A flag that ``XLA_FLAGS`` already sets is left as it is.
An XLA that does not know a flag aborts the process, so the flags after the
first are added only when the installed jaxlib's compiler names them (an
older one may not). This module imports nothing from jax: it must run before jax starts
its backend, which reads ``XLA_FLAGS`` once.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
from pathlib import Path

OPT_LEVEL = "--xla_backend_optimization_level=0"
EMITTERS = "--xla_cpu_use_fusion_emitters=false"
SPLIT = "--xla_cpu_parallel_codegen_split_count=1"


def _jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's compiled XLA contains the flag's name (so parsing it will not abort)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    name = flag.lstrip("-").split("=")[0].encode()
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("*.so"):
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):  # an empty or unreadable file
            continue
    return False


def fast_compile_flags(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) plus the flags above that it does not set already."""
    out = flags.split()
    for flag in (OPT_LEVEL, EMITTERS, SPLIT):
        name = flag.split("=")[0]
        if not any(f.split("=")[0] == name for f in out) and (flag == OPT_LEVEL or _jaxlib_knows(flag)):
            out.append(flag)
    return " ".join(out)


def use_fast_compile() -> None:
    """Set ``XLA_FLAGS`` for this process (effective only before jax compiles its first program)."""
    os.environ["XLA_FLAGS"] = fast_compile_flags(os.environ.get("XLA_FLAGS", ""))
