"""A real run of 2 processes: the tensor-parallel GPT on a 2-D mesh across processes, a death, a resume.

Two processes on this machine (``manualbp train --num-processes 2 --coordinator 127.0.0.1:<port>``, CPU
collectives over gloo), each with 2 simulated devices, train the tensor-parallel GPT on the global 2 x 2
mesh (batch x model); the same command in one process with 4 devices is the reference. Every collective
of this mesh sums 2 values, which gives the same bits in either order, so the final state (parameters,
Adam's moments, the key) must be bitwise equal, not merely close. A process that dies mid-run must make
the other fail at once with an error that says so, and the 2 processes resumed from the last checkpoint
must end bit-identical to the uninterrupted single process.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "distributed_worker.py")
COMMAND = ["train", "--model", "gpt", "--data", "sort", "--steps", "20", "--batch-size", "8", "--devices", "4",
           "--model-parallel", "2", "--json"]
TIMEOUT_S = 240  # per run: only stops a run that hangs (a run takes seconds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(local_devices: int, **extra) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={local_devices}".strip()
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "NPROC": str(4 * local_devices), **extra}


def start(args, local_devices, **extra):
    return subprocess.Popen([sys.executable, WORKER, *COMMAND, *args], env=environment(local_devices, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def processes(args, port, **extra):
    common = [*args, "--num-processes", "2", "--coordinator", f"127.0.0.1:{port}"]
    return [start([*common, "--process-id", str(i)], 2, **extra) for i in range(2)]


def finish(proc):
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out, err


def summary(out: str) -> dict:
    """The command's JSON summary (or error), after the lines gloo prints on stdout as processes connect."""
    lines = out.splitlines()
    return json.loads("\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("{")):]))


def state(directory):
    with np.load(os.path.join(directory, "checkpoint.npz")) as z:
        meta = json.loads(z["header"].tobytes())["meta"]
        return meta["step"], [z[k] for k in sorted(z.files, key=lambda k: (len(k), k)) if k.startswith("leaf_")]


def assert_bitwise_equal(a, b):
    assert len(a) == len(b)
    differ = [i for i, (u, v) in enumerate(zip(a, b)) if u.dtype != v.dtype or not np.array_equal(u, v)]
    assert differ == [], f"{len(differ)} of {len(a)} leaves differ, e.g. leaf {differ[0]}"


@pytest.mark.slow
def test_two_processes_survive_a_death_and_end_bitwise_as_one_process(tmp_path):
    """One process on 4 devices runs 20 steps; beside it, 2 processes on 2 devices each run the same command until
    process 1 dies after step 12 (the last checkpoint: step 10), and both are started again with --resume. The
    resumed pair must end with the single process's state to the bit: multi-process training and resuming it are
    both exact. (The uninterrupted pair ends there too: docs/parallel.md.)"""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    single = start(["--checkpoint", one], 4)
    dying = ["--checkpoint", two, "--checkpoint-every", "5"]
    survivor, victim = processes(dying, free_port(), DIE_AFTER_STEP="12")
    code_victim, _, _ = finish(victim)
    died_at = time.monotonic()
    code, out, err = finish(survivor)
    waited = time.monotonic() - died_at
    assert code_victim == 9
    assert code == 1, err[-3000:]
    error = summary(out)["error"]
    assert error.startswith("process 0 of 2 lost a peer during step 13 (")
    assert error.endswith("): another process of the run has stopped; restart all 2 processes with resume "
                          "(--resume) to continue from the last checkpoint, at step 10")
    assert waited < 30, f"the survivor took {waited:.1f} s to stop"
    assert state(two)[0] == 10

    resumed = [finish(p) for p in processes([*dying, "--resume"], free_port())]
    for code, out, err in resumed:
        assert code == 0, err[-3000:]
        assert summary(out)["resumed_from"] == 10 and summary(out)["processes"] == 2
    code, out, err = finish(single)
    assert code == 0, err[-3000:]
    assert summary(out)["processes"] == 1 and summary(out)["model_parallel"] == 2
    assert summary(out)["final_loss"] == summary(resumed[0][1])["final_loss"]
    step, reference = state(one)
    assert step == 20 and state(two)[0] == 20
    assert_bitwise_equal(reference, state(two)[1])
