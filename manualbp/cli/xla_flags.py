"""XLA flags for a process that mostly compiles small programs, each run once (``manualbp check``, the tests).

Such a process spends most of its time in XLA's CPU compiler, not running
code, so three flags that trade generated-code speed for compile speed pay:

- ``--xla_backend_optimization_level=0``: LLVM's cheapest optimization level;
- ``--xla_cpu_use_fusion_emitters=false``: XLA CPU's older elemental emitters for
  fused elementwise code, which compile faster than its MLIR fusion emitters;
- ``--xla_cpu_parallel_codegen_split_count=1``: one LLVM module per program, not
  a module split in parts compiled on a thread pool: for small programs,
  splitting and scheduling the parts cost more than they save.

What each saves is measured in BENCHMARKS.md ("Compile flags").

Each changes how a program is compiled, not what it computes: in ``check``
the manual and the jax.grad side are compiled alike, and no tolerance
depends on them. A flag that ``XLA_FLAGS`` already sets is left as it is.
An XLA that does not know a flag aborts the process, so the flags after the
first are added only when the installed jaxlib registers them: when its
libraries hold the help text XLA registers the flag with. The flag's name is
not enough: a jaxlib can keep the name as a field of its DebugOptions proto
after it stops registering the flag ("Unknown flag in XLA_FLAGS"). A help text
reworded by a later XLA only leaves its flag out. This module imports nothing
from jax: it must run before jax starts its backend, which reads ``XLA_FLAGS`` once.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
from pathlib import Path

OPT_LEVEL = "--xla_backend_optimization_level=0"  # in every XLA
EMITTERS = "--xla_cpu_use_fusion_emitters=false"
SPLIT = "--xla_cpu_parallel_codegen_split_count=1"
# the help text each flag is registered with in XLA's debug_options_flags.cc
HELP = {
    EMITTERS: b"Use fusion emitters for code generation in the CPU backend.",
    SPLIT: b"Split LLVM module into at most this many parts before codegen to enable parallel compilation",
}


def _jaxlib_holds(text: bytes) -> bool:
    """Whether one of the installed jaxlib's compiled libraries contains ``text``."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    for lib in Path(next(iter(spec.submodule_search_locations))).glob("*.so"):
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(text) >= 0:
                    return True
        except (OSError, ValueError):  # an empty or unreadable file
            continue
    return False


def registered(flag: str) -> bool:
    """Whether the installed jaxlib's XLA registers ``flag`` (so that parsing it will not abort the process)."""
    name = flag.lstrip("-").split("=")[0].encode()
    return _jaxlib_holds(name) and _jaxlib_holds(HELP[flag])


def fast_compile_flags(flags: str) -> str:
    """``flags`` (an ``XLA_FLAGS`` value) plus the flags above that it does not set already."""
    out = flags.split()
    for flag in (OPT_LEVEL, EMITTERS, SPLIT):
        name = flag.split("=")[0]
        if not any(f.split("=")[0] == name for f in out) and (flag == OPT_LEVEL or registered(flag)):
            out.append(flag)
    return " ".join(out)


def use_fast_compile() -> None:
    """Set ``XLA_FLAGS`` for this process (effective only before jax compiles its first program)."""
    os.environ["XLA_FLAGS"] = fast_compile_flags(os.environ.get("XLA_FLAGS", ""))
