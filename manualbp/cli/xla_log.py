"""XLA's "Very slow compile?" banner kept out of the command line's output (``MANUALBP_XLA_LOG=1`` keeps it).

XLA's compiler logs, at error level and with no switch to turn it off (jax-ml/jax#26098), a banner when a
compile takes long::

    E1207 02:00:07.776768   19377 slow_operation_alarm.cc:73]
    ********************************
    [Compiling module jit_line for CPU] Very slow compile? If you want to file a bug, run with ...
    ********************************

A user of ``manualbp train`` reads it as an error of theirs. The only filter XLA offers,
``TF_CPP_MIN_LOG_LEVEL=3``, hides its real errors too. So while a command runs, file descriptor 2 (where
XLA's C++ logging writes) is a pipe read by a thread that passes every line on to the real stderr except
the banner's: a line from ``slow_operation_alarm.cc`` and the asterisk, blank and "Very slow compile?"
lines that follow it. On leaving, fd 2 is restored (so a traceback printed after the command goes straight
to it) and the pipe drained.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

KEEP = "MANUALBP_XLA_LOG"


def _in_banner(line: bytes) -> bool:
    text = line.strip()
    return not text or set(text) == {ord("*")} or b"Very slow compile?" in text


def filter_lines(lines, write) -> None:
    """``write`` every line of ``lines`` (bytes, each ending in a newline but perhaps the last) but the banners'."""
    banner = False
    for line in lines:
        if b"slow_operation_alarm.cc" in line:
            banner = True
            continue
        if banner and _in_banner(line):
            continue
        banner = False
        write(line)


@contextlib.contextmanager
def slow_compile_banner_filtered():
    """Run the block with fd 2 filtered (module docstring); a no-op when ``MANUALBP_XLA_LOG=1``."""
    if os.environ.get(KEEP) == "1":
        yield
        return
    sys.stderr.flush()
    read, write = os.pipe()
    real = os.dup(2)
    os.dup2(write, 2)
    os.close(write)

    def forward():
        with os.fdopen(read, "rb") as pipe, contextlib.suppress(OSError):  # OSError: a child wrote after we left
            filter_lines(iter(pipe.readline, b""), lambda line: os.write(real, line))

    thread = threading.Thread(target=forward, name="xla-log-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer closed: the thread reads to its end and stops
        thread.join(timeout=5)
        os.close(real)
