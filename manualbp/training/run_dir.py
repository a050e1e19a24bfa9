"""A training run's checkpoint directory: opened (and checked) before step 1, saved into, resumed from.

``train(checkpoint=DIR)`` and ``manualbp train --checkpoint DIR`` mean the
same thing: DIR holds ``checkpoint.npz`` (the state: parameters, optimizer
state, running statistics, key, step, data position and the run's settings)
and ``history.log`` (one record per step, appended at each save).

- A run into a DIR that holds a checkpoint refuses to start unless it
  resumes it (``resume=True``) or replaces it (``overwrite=True``).
- ``resume=True`` on a missing DIR, or one without a checkpoint, is an error,
  not a fresh start.
- Resuming requires the same model, head, data, batch size, dtype, key and
  settings (the CLI's lr, seed, optimizer, clip) and an optimizer state of
  the same arrays; a checkpoint beyond the requested number of steps says so.
- Temporary files left by a crash mid-save are removed when DIR is opened.
- A run of several processes (``manualbp.training.parallel.initialize``) shares one DIR: every
  process gathers the state whole (``parallel.to_host``, a collective) and process 0 alone writes
  it; every process reads it to resume.
"""

from __future__ import annotations

import json
import os
import uuid

import jax
import numpy as np

from manualbp.training import checkpoint as ckpt
from manualbp.training import parallel
from manualbp.training.checkpoint import CheckpointError

STATE_FILE = "checkpoint.npz"
HISTORY_FILE = "history.log"
_MAX_STEP = 1 << 48


def _describe(tree) -> list:
    return [[list(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)).name]
            for leaf in jax.tree_util.tree_leaves(tree)]


class RunDir:
    """An opened checkpoint directory. ``resuming`` says whether ``restore`` must be called before training."""

    def __init__(self, directory, *, resume: bool = False, overwrite: bool = False):
        self.dir = os.fspath(directory)
        self.state_path = os.path.join(self.dir, STATE_FILE)
        self.log_path = os.path.join(self.dir, HISTORY_FILE)
        if os.path.lexists(self.dir) and not os.path.isdir(self.dir):
            raise CheckpointError(f"checkpoint {self.dir}: is a file, not a directory")
        exists = os.path.lexists(self.state_path)
        if resume and not exists:
            why = "does not exist" if not os.path.isdir(self.dir) else f"holds no checkpoint ({STATE_FILE})"
            raise CheckpointError(f"checkpoint {self.dir}: {why}; nothing to resume (drop resume=True to start afresh)")
        if exists and not (resume or overwrite):
            raise CheckpointError(f"checkpoint {self.dir}: already holds a checkpoint{self._at()}; resume it "
                                  "(resume=True) or replace it (overwrite=True)")
        self.writes = jax.process_index() == 0  # of several processes, process 0 alone writes
        self.resuming = resume
        self.run_id = uuid.uuid4().hex
        self.committed = 0  # steps whose history is in the log and whose state is in the state file
        if not self.writes:
            return
        try:
            os.makedirs(self.dir, exist_ok=True)
            ckpt.atomic_write(os.path.join(self.dir, ".write-test"), lambda f: f.write(b"ok"))
            os.remove(os.path.join(self.dir, ".write-test"))
        except OSError as e:
            raise CheckpointError(f"checkpoint {self.dir}: cannot write there ({e.strerror or e})") from None
        for name in os.listdir(self.dir):  # temporary files of a save that crashed before its rename
            if name.startswith(ckpt.TMP_PREFIX):
                os.remove(os.path.join(self.dir, name))

    def _at(self) -> str:
        try:
            return f" at step {ckpt.read_meta(self.state_path).get('step')}"
        except (OSError, CheckpointError):
            return ""

    def restore(self, state, key, layout, steps: int, expect: dict):
        """(state, step, position, history) from DIR, validated against this run's ``state`` (shapes), ``key``,
        history ``layout``, target ``steps`` and ``expect`` (model, head, data, ..., settings)."""
        meta = ckpt.read_meta(self.state_path)
        where = f"checkpoint {self.dir}"
        for name, want in expect.items():
            if name != "settings" and meta.get(name) != want:
                raise CheckpointError(f"{where}: it was written for {name} {meta.get(name)!r}, but this run has "
                                      f"{name} {want!r}")
        settings, saved = expect.get("settings", {}), meta.get("settings", {})
        if saved != settings:
            diff = ", ".join(f"{k} {saved.get(k)!r} (this run: {settings.get(k)!r})"
                             for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k))
            raise CheckpointError(f"{where}: was written with {diff}; resume with the same settings, or start "
                                  "afresh with overwrite=True")
        for path, st in state.items():
            want, got = _describe(st.opt_state), meta.get("opt_state", {}).get(path)
            if got != want:
                raise CheckpointError(f"{where}: its {path} optimizer state ({len(got or [])} arrays) is not this "
                                      f"run's ({len(want)} arrays): another optimizer or clipping")
        step = meta.get("step")
        if not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
            raise CheckpointError(f"{where}: step {step!r} is not a step count")
        if step > steps:
            raise CheckpointError(f"{where}: is at step {step}, beyond the {steps} steps asked for; ask for more "
                                  "steps to continue it")
        if meta.get("layout") != layout:
            raise CheckpointError(f"{where}: its history records {meta.get('layout')}, this run's {layout}")
        key_data = np.asarray(jax.device_get(jax.random.key_data(key)))
        tree, meta = ckpt.load(self.state_path, {"state": state, "key": key_data}, expect=dict(expect, settings=saved))
        if not np.array_equal(tree["key"], key_data):
            raise CheckpointError(f"{where}: was written with another key; resume with the same key")
        position = meta.get("position")
        if not (isinstance(position, list) and len(position) == 2 and all(isinstance(v, int) and v >= 0
                                                                           for v in position)):
            raise CheckpointError(f"{where}: data position {position!r} is not (epoch, offset)")
        self.run_id, self.committed = str(meta.get("run_id")), step
        history = ckpt.read_log(self.log_path, self.run_id, layout, step)
        return tree["state"], step, tuple(position), history

    def save(self, state, key, step: int, position, history_since: dict, layout, expect: dict):
        """Append the history of steps committed+1..step, then replace the state file (both durable on return)."""
        host = parallel.to_host(state)  # on every process: gathering a sharded state is a collective
        if not self.writes:
            self.committed = step
            return
        if self.committed == 0:
            ckpt.create_log(self.log_path, self.run_id, layout, history_since)
        else:
            ckpt.append_log(self.log_path, self.run_id, layout, self.committed, history_since)
        meta = {**expect, "step": int(step), "position": [int(v) for v in position], "run_id": self.run_id,
                "layout": layout, "opt_state": {path: _describe(st.opt_state) for path, st in host.items()}}
        json.dumps(meta, allow_nan=False)  # settings must be JSON: fail here, not in the middle of the save
        key_data = np.asarray(jax.device_get(jax.random.key_data(key)))
        ckpt.save(self.state_path, {"state": host, "key": key_data}, meta)
        self.committed = step
