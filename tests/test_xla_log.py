"""The command line keeps XLA's "Very slow compile?" banner out of its stderr, and nothing else."""

import os
import subprocess
import sys

from manualbp.cli.xla_log import filter_lines

BANNER = [
    b"E1207 02:00:07.776768   19377 slow_operation_alarm.cc:73] \n",
    b"********************************\n",
    b"[Compiling module jit_line for CPU] Very slow compile? If you want to file a bug, run with envvar "
    b"XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.\n",
    b"********************************\n",
    b"E1207 02:06:04.370301   19375 slow_operation_alarm.cc:140] The operation took 7m56.574756427s\n",
    b"\n",
    b"********************************\n",
    b"[Compiling module jit_line for CPU] Very slow compile? If you want to file a bug, ...\n",
    b"********************************\n",
]


def test_the_banner_goes_and_every_other_line_stays():
    lines = [b"before\n", *BANNER, b"E1207 02:06:05 other.cc:1] a real error\n", b"***** not a banner\n", b"last"]
    kept = []
    filter_lines(lines, kept.append)
    assert kept == [b"before\n", b"E1207 02:06:05 other.cc:1] a real error\n", b"***** not a banner\n", b"last"]


SCRIPT = """
import os, sys
from manualbp.cli.xla_log import slow_compile_banner_filtered
banner = {banner!r}
with slow_compile_banner_filtered():
    os.write(2, b"kept 1\\n")
    for line in banner:
        os.write(2, line)            # as XLA's C++ logging writes: to file descriptor 2
    print("kept 2", file=sys.stderr)
raise SystemExit("kept 3: a traceback or exit message after the command")
"""


def _run(env):
    code = SCRIPT.format(banner=BANNER)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, env={**os.environ, **env}, timeout=120)


def test_a_command_s_stderr_loses_the_banner_only():
    proc = _run({"MANUALBP_XLA_LOG": "0"})
    assert proc.stderr.decode() == "kept 1\nkept 2\nkept 3: a traceback or exit message after the command\n"


def test_asked_for_the_banner_stays():
    assert b"Very slow compile?" in _run({"MANUALBP_XLA_LOG": "1"}).stderr
