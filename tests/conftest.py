"""Test configuration: float64 available, no silent rank promotion (a mis-broadcast bias fails loudly).

The suite is dominated by XLA compile time (many small configurations, each
compiled once), so tests ask XLA's CPU backend to compile cheaply, with the
flags ``manualbp check`` uses (manualbp/cli/xla_flags.py). That changes how
long compiling takes, not what is computed: no test tolerance depends on it.
"""

import atexit
import gc
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

if "jax" not in sys.modules:  # only effective before jax starts its backend
    # manualbp/cli/xla_flags.py imports no jax; loaded by path, since importing the package would start jax
    _spec = importlib.util.spec_from_file_location(
        "_manualbp_xla_flags", Path(__file__).resolve().parents[1] / "manualbp" / "cli" / "xla_flags.py")
    _flags = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_flags)
    _flags.use_fast_compile()

# no Python tracebacks in the compiled programs' op locations (used only in XLA's own error messages): a quarter of
# the time to trace and lower the many small programs of the suite (tests/test_mutations.py: 43 -> 33 s); an
# environment variable, so that the suite's subprocesses (the documents' blocks, the CLI) inherit it
os.environ.setdefault("JAX_TRACEBACK_IN_LOCATIONS_LIMIT", "0")

# `manualbp check` keeps compiled programs in a persistent cache in the user's cache dir; the suite must not write there
os.environ.setdefault("MANUALBP_CACHE_DIR", "")

# One persistent compilation cache for this run, shared by the xdist workers and by the subprocesses the suite starts
# (the documents' blocks, the CLI): a program one process compiled is loaded, not compiled again, by the others. The
# key is the compiled module itself, so equal programs from different Python objects meet there too (jax.grad's
# program for a mutant and for its clean twin, a re-created jit of the same function). The directory is new for
# each run (made here, in the process that starts the workers, which inherit the environment) and removed at the
# end, so no run reads another's entries; a JAX_COMPILATION_CACHE_DIR set by the user is used and left alone.
_RUN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _RUN_CACHE = tempfile.mkdtemp(prefix="manualbp-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _RUN_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the suite's programs compile in well under 1 s
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


# Python's full garbage collections (generation 2) walk every object the process holds, and a worker of this suite
# ends up holding millions: the jaxprs, lowered modules and executables that jax keeps for thousands of compiled
# programs. Measured on the whole suite, 2 workers: 16 full collections, 7 s per worker, and the last one, at exit,
# about 2 s more. gc.freeze() moves every object that exists into a permanent generation that no collection walks:
# done after collection and after each test, a collection walks only what the current test made. A reference cycle
# a test leaves behind is never freed, which measured nothing: the workers' peak RSS was 4.1 and 4.2 GB either way.
def pytest_collection_finish(session):
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    gc.freeze()


# An xdist worker has sent its every result to the controller (over execnet) before the interpreter exits, and what is
# left then is freeing: jax's atexit handler clears its caches (thousands of executables, MLIR contexts), then Python
# frees the rest, about 3 s per worker at the end of the suite. Registered after jax's handler, this one runs first
# and ends the worker at once (status 0, what a worker's normal exit gives). Never in the controller, whose exit status
# is the suite's verdict, nor in a run without workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    atexit.register(os._exit, 0)


def pytest_unconfigure(config):
    if _RUN_CACHE is not None:  # the process that made it (the workers found it in their environment)
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


# The tests of several seconds (marked slow) run first: xdist's worksteal gives each worker a contiguous half of this
# order and lets an idle worker take from the other's queue, so the run then ends on short tests, not with one worker
# idle while the other runs a subprocess for 7 s (measured: 3.3 s at the end of a 177 s run). A stable sort: the
# order within each group is the collection order, the same in every worker, as xdist requires.
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
