"""Training with any optax optimizer, by manual backprop, by jax.grad, or both in lockstep (twin mode).

The loop (``manualbp.training.loop``) draws minibatches, calls the jitted step
of ``manualbp.training.step`` and keeps its logs on the device; they are
pulled to the host only when ``on_log`` asks (every ``log_every`` steps), at a
checkpoint, and at the end. Twin mode's verdict is
``manualbp.training.twin.Divergence``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from manualbp.backprop import check_values
from manualbp.layers.arguments import (
    as_key,
    check_callable,
    check_count,
    check_flag,
    check_head_object,
    check_layer_object,
)
from manualbp.layers.base import check_finite, name_of
from manualbp.training import loop
from manualbp.training.data import Dataset, as_inputs, check_finite_data
from manualbp.training.run_dir import RunDir
from manualbp.training.step import GRADS, check_twin_optimizers, evaluate, metric_name, param_names
from manualbp.training.twin import Divergence
from manualbp.training.twin_diagnosis import diagnose_first_failure
from manualbp.verify.precision import full_precision


@dataclass
class TrainResult:
    """The outcome of ``train``: final params, optimizer state and running statistics, history, test metric.

    ``history`` maps "loss" and the metric name to arrays of shape (steps,)
    (the training-batch value at each step); ``test`` maps the metric name
    to its value on the test set, computed in evaluation mode: every
    BatchNorm with the running statistics ``stats`` that training kept
    ({} for a model without BatchNorm). Predict with
    ``model.forward_eval(result.params, result.stats, x)``, any batch size.
    """

    params: object
    opt_state: object
    stats: dict
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


def _check_arguments(where, model, head, optimizers, key, log_every, on_log, checkpoint_every, resume, overwrite):
    """The arguments that are not data, each refused with a TypeError/ValueError naming ``where`` before step 1."""
    check_layer_object(where, model)
    check_head_object(where, head)
    for name, opt in optimizers.items():
        if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
            raise TypeError(f"{where}: {name} must be an optax.GradientTransformation (e.g. optax.sgd(0.1)), got "
                            f"{type(opt).__name__}")
    as_key(where, key)
    check_count(where, "log_every", log_every, minimum=0)
    check_count(where, "checkpoint_every", checkpoint_every, minimum=0)
    if on_log is not None:
        check_callable(where, "on_log", on_log, "(step, {name: float})")
    check_flag(where, "resume", resume)
    check_flag(where, "overwrite", overwrite)


def _check_run(model, head, params, data: Dataset, steps, batch_size, grads, where="train"):
    if not isinstance(data, Dataset):
        raise TypeError(f"{where}: data must be a manualbp.training.data.Dataset, got {type(data).__name__}")
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"{where}: steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    check_finite_data(data, where)
    if batch_size > len(data.x_train):
        raise ValueError(
            f"{where}: batch_size {batch_size} is larger than the data ({len(data.x_train)} training examples)"
        )
    for g in grads:
        if g not in GRADS:
            raise ValueError(f"{where}: grad must be one of {GRADS}, got {g!r}")
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError(f"{where}: {name_of(model)} has no parameters to train")
    check_finite(where, "the initial params", params)
    # the head's own shape/dtype checks, traced (no compilation), then the class range on the host, then every value
    # check of the manual value_and_grad (labels, Embedding ids, targets) on the concrete data, once before step 1:
    # the jitted step sees only tracers
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
                    f"{where}: {data.name} has labels in [{labels.min()}, {labels.max()}] but {name_of(model)} "
                    f"outputs {classes} classes; the labels do not match the head"
                )
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        check_values(model, head, params, jnp.asarray(as_inputs(x, dtype)), jnp.asarray(y, y_dtype))


def _split_history(hist: dict, path: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in hist.items() if k.startswith(path + "/")}


class NonFiniteError(ArithmeticError):
    """The loss went non-finite during ``train``; ``step`` is the first step whose loss was NaN or Inf."""

    def __init__(self, step: int, what: str):
        super().__init__(
            f"train: the {what.replace('/', ' ')} became non-finite at step {step} (diverging: lower the learning "
            "rate, or clip the gradients); nothing non-finite was saved")
        self.step, self.what = step, what


def _check_compute(compute_dtype, params):
    """The compute dtype's name, or None; a ValueError unless it is a floating dtype no wider than the parameters'."""
    if compute_dtype is None:
        return None
    master = jax.tree_util.tree_leaves(params)[0].dtype
    try:
        compute = jnp.dtype(compute_dtype)
    except TypeError:
        compute = None
    if compute is None or not jnp.issubdtype(compute, jnp.floating) or compute.itemsize > master.itemsize:
        raise ValueError(f"train: compute_dtype must be a floating dtype no wider than the parameters' ({master.name}), "
                         f"e.g. 'bfloat16' with float32 parameters; got {compute_dtype!r}")
    return compute.name


def _state_dir(checkpoint, resume, overwrite):
    return RunDir(checkpoint, resume=resume, overwrite=overwrite) if checkpoint is not None else None


def _expect(model, head, data, batch_size, params, paths, settings, compute=None) -> dict:
    """What a resumed run must share with its checkpoint (also stored in it)."""
    out = {"model": repr(model), "head": repr(head), "paths": sorted(paths), "data": data.name,
           "batch_size": int(batch_size), "dtype": np.dtype(jax.tree_util.tree_leaves(params)[0].dtype).name,
           "settings": dict(settings or {})}
    return out if compute is None else {**out, "compute_dtype": compute}


def train(model, head, params, data: Dataset, *, optimizer: optax.GradientTransformation | None = None,
          steps: int, batch_size: int, grad: str = "manual", key, log_every: int = 0,
          on_log: Callable | None = None, checkpoint=None, checkpoint_every: int = 0, resume: bool = False,
          overwrite: bool = False, settings: dict | None = None, devices: int | None = None,
          compute_dtype=None) -> TrainResult:
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
      log_every, on_log: call ``on_log(step, {name: float})`` every ``log_every`` steps (with the
        checkpoint saves, the only host syncs during training).
      checkpoint: a directory (``manualbp.training.run_dir``), checked before step 1; saved every
        ``checkpoint_every`` steps (0: only at the end), on Ctrl-C, and durably.
      resume: continue the checkpoint in ``checkpoint`` (an error if there is none).
      overwrite: replace the checkpoint in ``checkpoint`` (without it, an existing one is refused).
      settings: JSON-able settings stored in the checkpoint that a resumed run must repeat (the CLI stores
        lr, seed, optimizer and clip, which the optimizer object cannot show).
      devices: data-parallel over this many devices (batch sharded, params replicated); None: one device.
      compute_dtype: mixed precision, e.g. "bfloat16" with float32 params: forward and backward in it, the
        params (master weights), optimizer state and update in theirs (``manualbp.training.step``); None: all
        in the params' dtype. Evaluation (``test``) runs in the params' dtype.

    Raises:
      NonFiniteError: the loss became NaN or Inf (found at the next log, save or the end; the run stops there).
      manualbp.training.checkpoint.CheckpointError: the checkpoint directory cannot be used as asked.
      KeyboardInterrupt: Ctrl-C (``loop.TrainingInterrupted``), after the current step and a last save.
    """
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    _check_arguments("train", model, head, {"optimizer": optimizer}, key, log_every, on_log, checkpoint_every, resume,
                     overwrite)
    _check_run(model, head, params, data, steps, batch_size, (grad,))
    compute = _check_compute(compute_dtype, params)
    run_dir = _state_dir(checkpoint, resume, overwrite)
    out = loop.run(model, head, params, data, optimizers={grad: optimizer}, twin=False, steps=steps,
                   batch_size=batch_size, key=key, log_every=log_every, on_log=on_log, run_dir=run_dir,
                   checkpoint_every=checkpoint_every, expect=_expect(model, head, data, batch_size, params, (grad,),
                                                                     settings, compute), devices=devices,
                   compute_dtype=compute)
    if out.nonfinite is not None:
        raise NonFiniteError(*out.nonfinite)
    return _result(model, data, grad, out)


def _result(model, data, path, out) -> TrainResult:
    st = out.state[path]
    return TrainResult(st.params, st.opt_state, st.stats, _split_history(out.history, path),
                       {metric_name(data): evaluate(model, st.params, st.stats, data, path)}, len(out.history[
                           f"{path}/loss"]), out.wall_s, out.start)


@full_precision
def train_twin(model, head, params, data: Dataset, *, optimizer: optax.GradientTransformation | None = None,
               reference_optimizer: optax.GradientTransformation | None = None, steps: int, batch_size: int,
               key, log_every: int = 0, on_log: Callable | None = None, checkpoint=None, checkpoint_every: int = 0,
               resume: bool = False, overwrite: bool = False, settings: dict | None = None,
               devices: int | None = None, compute_dtype=None) -> TwinResult:
    """Train the manual and the reference path in lockstep from the same ``params`` on the same batches.

    Arguments as ``train``. ``reference_optimizer`` (default: ``optimizer``)
    lets the two paths use different but equivalent transformations, e.g.
    ``manualbp.training.clip.clip_by_global_norm`` against ``optax.clip_by_global_norm``
    (their states must hold the same arrays). Every step also evaluates the
    reference gradient and optimizer at the manual path's own parameters,
    state and batch; ``divergence`` judges manual against that, step by step
    (``manualbp.training.twin``), and records how far the two trajectories
    drift apart. A run that goes non-finite stops at the next log, save or
    the end, and its verdict is DIVERGED (non-finite) at the first such step.
    With ``compute_dtype`` both paths compute in it (``train``), the check
    compares them at the same cast parameters and judges with that dtype's
    tolerance and error model.
    """
    optimizer = optax.sgd(0.1) if optimizer is None else optimizer
    reference_optimizer = optimizer if reference_optimizer is None else reference_optimizer
    _check_arguments("train_twin", model, head, {"optimizer": optimizer, "reference_optimizer": reference_optimizer},
                     key, log_every, on_log, checkpoint_every, resume, overwrite)
    _check_run(model, head, params, data, steps, batch_size, GRADS, "train_twin")
    check_twin_optimizers(optimizer, reference_optimizer, params)
    compute = _check_compute(compute_dtype, params)
    run_dir = _state_dir(checkpoint, resume, overwrite)
    out = loop.run(model, head, params, data, optimizers={"manual": optimizer, "reference": reference_optimizer},
                   twin=True, steps=steps, batch_size=batch_size, key=key, log_every=log_every, on_log=on_log,
                   run_dir=run_dir, checkpoint_every=checkpoint_every,
                   expect=_expect(model, head, data, batch_size, params, GRADS, settings, compute), devices=devices,
                   compute_dtype=compute)
    dtype = compute or np.dtype(jax.tree_util.tree_leaves(params)[0].dtype).name
    divergence = Divergence.from_history(param_names(params), out.history, dtype)
    if not divergence.ok:  # what the first diverging gradient IS: the run replayed to that step, the two fitted
        divergence.diagnosis = diagnose_first_failure(model, head, params, data, train=train, optimizer=optimizer,
                                                      batch_size=batch_size, key=key, divergence=divergence,
                                                      names=divergence.names, compute_dtype=compute_dtype)
    return TwinResult(_result(model, data, "manual", out), _result(model, data, "reference", out), divergence)
