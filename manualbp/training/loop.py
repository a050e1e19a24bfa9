"""The training loop shared by ``train`` and ``train_twin``: batches, the jitted step, logs, checkpoints, Ctrl-C.

The step's logs stay on the device; the host looks at them only where it
has to sync anyway: every ``log_every`` steps (progress), at a checkpoint
save, and at the end. At each of those points a non-finite loss (or, in
twin mode, a non-finite parameter) stops the run: nothing non-finite is ever
saved over a good checkpoint. Ctrl-C (SIGINT) lets the current step finish,
saves a last checkpoint and raises ``KeyboardInterrupt``; a second Ctrl-C
interrupts at once.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from dataclasses import dataclass

import jax
import numpy as np

from manualbp.training import parallel
from manualbp.training.data import Batches, as_inputs
from manualbp.training.running_stats import init_running_stats
from manualbp.training.step import PathState, make_step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``step`` steps were done; ``saved`` says whether a checkpoint holds them."""

    def __init__(self, step: int, saved: bool):
        super().__init__(f"interrupted after step {step}" + ("; checkpoint saved" if saved else ""))
        self.step, self.saved = step, saved


@dataclass
class LoopOutput:
    state: dict
    history: dict  # {name: array (steps_done, *shape)}
    start: int  # the step the run resumed from (0 for a fresh run)
    wall_s: float
    nonfinite: tuple | None  # (step, what) of the first non-finite value, if the run stopped on one


@contextlib.contextmanager
def _sigint_flag():
    """Within: the first SIGINT sets ``flag["set"]`` (the loop stops cleanly); a second raises KeyboardInterrupt."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def first_nonfinite(history: dict, offset: int = 0):
    """(step, what) of the first step whose loss (or, in twin mode, any parameter) is not finite, else None."""
    bad = {}
    for name, values in history.items():
        if name.endswith("/loss"):
            flags = ~np.isfinite(values)
        elif name == "twin/finite":  # (steps, 2, n_leaves): manual, reference parameters finite
            flags = ~values.reshape(len(values), -1).all(axis=1)
        else:
            continue
        if flags.any():
            bad[name] = int(np.argmax(flags))
    if not bad:
        return None
    name = min(bad, key=bad.get)
    return offset + bad[name] + 1, name


def _stack(entries: list, layout) -> dict:
    pulled = jax.device_get(entries)
    return {name: np.asarray([e[name] for e in pulled], dtype).reshape((len(pulled), *shape))
            for name, shape, dtype in layout}


def history_layout(step_fn, state, x, y) -> list:
    """[[name, shape, dtype], ...] of one step's logs, sorted by name (traced, not run)."""
    logs = jax.eval_shape(step_fn, state, x, y)[1]
    return [[name, list(v.shape), np.dtype(v.dtype).name] for name, v in sorted(logs.items())]


def training_mesh(model, devices):
    """The mesh a run trains on: the model's own (tensor-parallel layers), a data-parallel one over ``devices``, or
    None (one device). A ``devices`` count that differs from the model's mesh is an error."""
    mesh = parallel.mesh_of(model)
    if mesh is None:
        return parallel.make_mesh(devices) if devices is not None else None
    if devices is not None and devices != mesh.size:
        raise ValueError(f"train: devices = {devices}, but {model.name}'s tensor-parallel layers run on a mesh of "
                         f"{mesh.size} devices {dict(mesh.shape)}; leave devices out (the model's mesh is used)")
    return mesh


# how a collective's failure reads when a peer process is gone: gloo's closed or reset connection, the coordination
# service's missed heartbeats (any other runtime error, e.g. out of memory, is raised as it is)
PEER_GONE = re.compile(r"gloo|connection (closed|reset|refused)|heartbeat|unavailable", re.IGNORECASE)


class PeerLost(RuntimeError):
    """A collective between processes failed: another process of the run has died (or its connection did).

    ``step`` is the step this process was running (dispatching, or waiting on) when the failure reached it.
    """

    def __init__(self, step: int, saved: int, error: Exception):
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        again = (f"restart all {jax.process_count()} processes with resume (--resume) to continue from the last "
                 f"checkpoint, at step {saved}") if saved else "no checkpoint was saved: restart the run"
        super().__init__(f"train: process {jax.process_index()} of {jax.process_count()} lost a peer during step "
                         f"{step} ({first}): another process of the run has stopped; {again}")
        self.step, self.saved = step, saved


def run(model, head, params, data, *, optimizers: dict, twin: bool, steps: int, batch_size: int, key,
        log_every: int, on_log, run_dir, checkpoint_every: int, expect: dict, devices,
        compute_dtype=None) -> LoopOutput:
    """Train from ``params`` (or from ``run_dir``'s checkpoint when it resumes) up to ``steps`` steps."""
    t0 = time.perf_counter()
    mesh = training_mesh(model, devices)
    if mesh is not None:
        parallel.check_batch_size(mesh, batch_size)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x_all = as_inputs(data.x_train, dtype)  # token ids stay integers
    y_all = np.asarray(data.y_train) if data.task == "classification" else np.asarray(data.y_train, dtype)
    stats = init_running_stats(model, params)
    state = {path: PathState(params, jax.jit(opt.init)(params), stats) for path, opt in optimizers.items()}
    step_fn = make_step(model, head, optimizers, data.task, twin, compute_dtype)
    layout = history_layout(step_fn, state, x_all[:batch_size], y_all[:batch_size])
    start, position, past = 0, (0, 0), _stack([], layout)
    if run_dir is not None and run_dir.resuming:
        state, start, position, past = run_dir.restore(state, key, layout, steps, expect)
    batches = Batches(len(x_all), batch_size, key, position)
    if mesh is not None:
        state = parallel.place(state, parallel.state_shardings(mesh, state, params,
                                                               parallel.param_shardings(mesh, model, params)))
    else:
        state = jax.device_put(state)
    logs, saved, done, current = [], 0, start, start  # saved: how many of ``logs`` the checkpoint holds

    def save():
        nonlocal saved
        if saved == len(logs):
            return None
        new = _stack(logs[saved:], layout)
        bad = first_nonfinite(new, start + saved)
        if bad is None:
            run_dir.save(state, key, done, batches.position, new, layout, expect)
            saved = len(logs)
        return bad

    def train_steps(interrupted):
        nonlocal state, done, current
        for s in range(start, steps):
            if interrupted["set"]:
                return None
            current = s + 1
            idx = batches.next()
            x, y = x_all[idx], y_all[idx]
            x, y = parallel.shard_batch(mesh, (x, y)) if mesh is not None else (x, y)
            state, entry = step_fn(state, x, y)
            logs.append(entry)
            done = s + 1
            if on_log is not None and log_every and (done % log_every == 0 or done == steps):
                values = {k: float(v) for k, v in jax.device_get(entry).items() if np.ndim(v) == 0}
                if not all(np.isfinite(v) for k, v in values.items() if k.endswith("/loss")):
                    return first_nonfinite(_stack(logs, layout), start)
                on_log(done, values)
            if run_dir is not None and ((checkpoint_every and done % checkpoint_every == 0) or done == steps):
                bad = save()
                if bad is not None:
                    return bad
        return None

    with _sigint_flag() as interrupted:
        try:
            nonfinite = train_steps(interrupted)
            if interrupted["set"] and nonfinite is None and done < steps:
                saved_now = run_dir is not None and save() is None and run_dir.committed == done > 0
                raise TrainingInterrupted(done, saved_now)
            history = {name: np.concatenate([past[name], v]) for name, v in _stack(logs, layout).items()}
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1 or not PEER_GONE.search(str(e)):
                raise
            raise PeerLost(current, run_dir.committed if run_dir is not None else 0, e) from e
    if nonfinite is None:
        nonfinite = first_nonfinite(history)
    return LoopOutput(state, history, start, time.perf_counter() - t0, nonfinite)
