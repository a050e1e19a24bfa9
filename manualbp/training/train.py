"""Training with any optax optimizer, by manual backprop, by jax.grad, or both in lockstep (twin mode).

The loop draws minibatches, calls the jitted step of ``manualbp.training.step``
and keeps its logs on the device; they are pulled to the host only when
``on_log`` asks (every ``log_every`` steps), at a checkpoint, and at the end.
Twin mode's verdict is ``manualbp.training.twin.Divergence``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
import optax

from manualbp.training import checkpoint as ckpt
from manualbp.training import parallel
from manualbp.training.data import Batches, Dataset, as_inputs
from manualbp.training.step import GRADS, evaluate, make_step, metric_name, param_names
from manualbp.training.twin import Divergence
from manualbp.verify.tolerances import tolerance


@dataclass
class TrainResult:
    """The outcome of ``train``: final params and optimizer state, per-step history, test metric.

    ``history`` maps "loss" and the metric name to arrays of shape (steps,)
    (the training-batch value at each step); ``test`` maps the metric name
    to its value on the test set.
    """

    params: object
    opt_state: object
    history: dict
    test: dict
    steps: int
    wall_s: float
    resumed_from: int = 0


@dataclass
class TwinResult:
    """``train_twin``'s outcome: one ``TrainResult`` per path and the ``Divergence`` between them."""

    manual: TrainResult
    reference: TrainResult
    divergence: Divergence


def _check_run(model, head, params, data: Dataset, steps, batch_size, grads):
    if not isinstance(data, Dataset):
        raise TypeError(f"train: data must be a manualbp.training.data.Dataset, got {type(data).__name__}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"train: steps must be a positive integer, got {steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"train: batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > len(data.x_train):
        raise ValueError(
            f"train: batch_size {batch_size} is larger than the data ({len(data.x_train)} training examples)"
        )
    for g in grads:
        if g not in GRADS:
            raise ValueError(f"train: grad must be one of {GRADS}, got {g!r}")
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError(f"train: {model.name} has no parameters to train")
    # the head's own shape/dtype checks, traced (no compilation), then the class range on the host
    dtype = leaves[0].dtype
    out = jax.eval_shape(lambda p, x: model.forward(p, x)[0], params,
                         jax.ShapeDtypeStruct((len(data.y_train), *data.input_shape),
                                              as_inputs(data.x_train[:0], dtype).dtype))
    y_dtype = data.y_train.dtype if data.task == "classification" else dtype
    jax.eval_shape(head.forward, out, jax.ShapeDtypeStruct(data.y_train.shape, y_dtype))
    if data.task == "classification" and len(out.shape) >= 2:
        classes = out.shape[-1]
        for labels in (data.y_train, data.y_test):
            if labels.min() < 0 or labels.max() >= classes:
                raise ValueError(
                    f"train: {data.name} has labels in [{labels.min()}, {labels.max()}] but {model.name} "
                    f"outputs {classes} classes; the labels do not match the head"
                )


def _run(model, head, params, data, *, optimizers, steps, batch_size, key, tol, log_every, on_log,
         checkpoint, checkpoint_every, resume, devices):
    """The loop shared by ``train`` and ``train_twin``; returns (state, history, resumed_from, wall_s)."""
    t0 = time.perf_counter()
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    task = data.task
    x_all = as_inputs(data.x_train, dtype)  # token ids stay integers
    y_all = np.asarray(data.y_train) if task == "classification" else np.asarray(data.y_train, dtype)
    state = {path: (params, jax.jit(opt.init)(params)) for path, opt in optimizers.items()}
    position, start, past = (0, 0), 0, {}
    meta = {"model": repr(model), "head": repr(head), "paths": sorted(optimizers), "data": data.name,
            "batch_size": int(batch_size), "dtype": np.dtype(dtype).name}
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        state, key, start, position, past = _restore(checkpoint, state, key, meta)
    batches = Batches(len(x_all), batch_size, key, position)
    mesh = parallel.make_mesh(devices) if devices is not None else None
    if mesh is not None:
        parallel.check_batch_size(mesh, batch_size)
        state = parallel.replicate(mesh, state)
    else:
        state = jax.device_put(state)
    step_fn = make_step(model, head, optimizers, task, tol)
    logs = []

    def history():
        pulled = jax.device_get(logs)
        out = {k: list(v) for k, v in past.items()}
        for entry in pulled:
            for k, v in entry.items():
                out.setdefault(k, []).append(v)
        return {k: np.asarray(v) for k, v in out.items()}

    for s in range(start, steps):
        idx = batches.next()
        x, y = x_all[idx], y_all[idx]
        x, y = (parallel.shard_batch(mesh, (x, y)) if mesh is not None else (x, y))
        state, entry = step_fn(state, x, y)
        logs.append(entry)
        if on_log is not None and log_every and ((s + 1) % log_every == 0 or s + 1 == steps):
            on_log(s + 1, {k: float(v) for k, v in jax.device_get(entry).items() if k != "diff"})
        if checkpoint is not None and ((checkpoint_every and (s + 1) % checkpoint_every == 0) or s + 1 == steps):
            _save(checkpoint, state, key, history(), meta, s + 1, batches.position)
    return state, history(), start, time.perf_counter() - t0


def _checkpoint_tree(state, key, hist):
    return {"state": state, "key": np.asarray(jax.device_get(jax.random.key_data(key))), "history": hist}


def _save(path, state, key, hist, meta, step, position):
    shapes = {k: [list(v.shape), v.dtype.name] for k, v in hist.items()}
    ckpt.save(path, _checkpoint_tree(jax.device_get(state), key, hist),
              {**meta, "step": step, "position": list(position), "key_impl": str(jax.random.key_impl(key)),
               "history": shapes})


def _restore(path, state, key, meta):
    """(state, key, step, position, history) from the checkpoint at ``path``, validated against this run."""
    saved_meta = ckpt.read_meta(path)
    hist_like = {k: np.zeros(shape, dtype) for k, (shape, dtype) in saved_meta.get("history", {}).items()}
    tree, saved_meta = ckpt.load(path, _checkpoint_tree(state, key, hist_like), expect=meta)
    key = jax.random.wrap_key_data(tree["key"], impl=saved_meta["key_impl"])
    return tree["state"], key, int(saved_meta["step"]), tuple(saved_meta["position"]), tree["history"]


def _split_history(hist: dict, path: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in hist.items() if k.startswith(path + "/")}


def train(model, head, params, data: Dataset, *, optimizer: optax.GradientTransformation | None = None,
          steps: int, batch_size: int, grad: str = "manual", key, log_every: int = 0,
          on_log: Callable | None = None, checkpoint=None, checkpoint_every: int = 0, resume: bool = False,
          devices: int | None = None) -> TrainResult:
    """Train ``params`` of ``model`` under ``head`` on ``data`` for ``steps`` minibatch steps.

    Args:
      model, head: a layer (usually ``Sequential``) and a loss head.
      params: initial parameters (from ``model.init``); their dtype sets the training dtype.
      data: a ``manualbp.training.data.Dataset``.
      optimizer: any ``optax.GradientTransformation`` (chains with clipping work unchanged);
        default ``optax.sgd(0.1)``.
      steps: total number of steps (a resumed run continues up to this count).
      batch_size: examples per step, <= the number of training examples.
      grad: "manual" (hand-written backward) or "reference" (jax.grad of the reference twin).
      key: PRNG key that orders the minibatches (one permutation per epoch).
      log_every, on_log: call ``on_log(step, {name: float})`` every ``log_every`` steps (the only host
        syncs during training).
      checkpoint: a file path; saved every ``checkpoint_every`` steps (0: only at the end), atomically.
      resume: continue from ``checkpoint`` if it exists (a checkpoint for another model/optimizer is refused).
      devices: data-parallel over this many devices (batch sharded, params replicated); None: one device.
    """
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    _check_run(model, head, params, data, steps, batch_size, (grad,))
    state, hist, start, wall = _run(
        model, head, params, data, optimizers={grad: optimizer}, steps=steps, batch_size=batch_size, key=key,
        tol=None, log_every=log_every, on_log=on_log, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume, devices=devices)
    p, opt_state = state[grad]
    return TrainResult(p, opt_state, _split_history(hist, grad), {metric_name(data): evaluate(model, p, data, grad)},
                       steps, wall, start)


def train_twin(model, head, params, data: Dataset, *, optimizer: optax.GradientTransformation | None = None,
               reference_optimizer: optax.GradientTransformation | None = None, steps: int, batch_size: int,
               key, log_every: int = 0, on_log: Callable | None = None, checkpoint=None, checkpoint_every: int = 0,
               resume: bool = False, devices: int | None = None) -> TwinResult:
    """Train the manual and the reference path in lockstep from the same ``params`` on the same batches.

    Arguments as ``train``. ``reference_optimizer`` (default: ``optimizer``)
    lets the two paths use different but equivalent transformations, e.g.
    ``manualbp.training.clip.clip_by_global_norm`` against ``optax.clip_by_global_norm``.
    The returned ``divergence`` holds, after every step and per parameter,
    the differences between the two models and names the first step and
    parameter exceeding ``manualbp.tolerance(dtype)``.
    """
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    reference_optimizer = optimizer if reference_optimizer is None else reference_optimizer
    _check_run(model, head, params, data, steps, batch_size, GRADS)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    tol = tolerance(dtype)
    state, hist, start, wall = _run(
        model, head, params, data, optimizers={"manual": optimizer, "reference": reference_optimizer}, steps=steps,
        batch_size=batch_size, key=key, tol=tol, log_every=log_every, on_log=on_log, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume, devices=devices)
    metric = metric_name(data)
    results = {
        path: TrainResult(state[path][0], state[path][1], _split_history(hist, path),
                          {metric: evaluate(model, state[path][0], data, path)}, steps, wall, start)
        for path in GRADS
    }
    diff = hist["diff"]
    divergence = Divergence(param_names(params), diff[..., 0], diff[..., 1], diff[..., 2], np.dtype(dtype).name, tol)
    return TwinResult(results["manual"], results["reference"], divergence)
