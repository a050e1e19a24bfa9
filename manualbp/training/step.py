"""One jitted training step: the manual path, the reference path, or both in lockstep with a per-step check (twin).

Per path: gradients -> ``optimizer.update`` -> ``optax.apply_updates``, and the
running statistics of every BatchNorm advanced from the same forward pass
(``manualbp.training.running_stats``). The step closes over the model, head
and optimizers (static), so it compiles once per run; losses, metrics and
twin figures stay on the device as the step's logs.

Twin mode also runs a *cross* evaluation: the reference gradient and the
reference optimizer's update at the manual path's own parameters, optimizer
state and batch. Manual and cross then differ only by the rounding of two
ways of computing the same numbers, whatever chaos does to the two
trajectories over many steps; ``manualbp.training.twin`` judges them.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from manualbp.layers.base import as_array
from manualbp.layers.code_key import Keyed
from manualbp.layers.walk import check_gradients
from manualbp.reference.dispatch import forward_eval as reference_forward_eval
from manualbp.reference.grad import loss_grads_outputs_stats
from manualbp.training import parallel
from manualbp.training.data import Dataset, as_inputs
from manualbp.training.twin import twin_figures

GRADS = ("manual", "reference")
METRIC_NAMES = {"classification": "accuracy", "regression": "mse"}


class PathState(NamedTuple):
    """What one path carries from step to step."""

    params: Any
    opt_state: Any
    stats: dict  # running statistics keyed by layer path; {} for a model without BatchNorm


def _manual(model, head, params, stats, x, y):
    """(loss, grads, logits, stats): ``backprop.loss_and_grads``, keeping the forward's cache for the running stats."""
    out, cache = model.forward(params, x)
    loss, head_cache = head.forward(out, y)
    grads, _ = model.backward(params, cache, head.backward(head_cache))
    check_gradients(model, params, grads, "train")  # static: a backward that leaves a gradient out stops here
    if stats:
        stats = model.update_stats(stats, cache)
    return loss, grads, out, stats


_GRADIENTS = {"manual": _manual, "reference": loss_grads_outputs_stats}


def metric_name(data: Dataset) -> str:
    """"accuracy" for classification, "mse" (mean squared error, not halved) for regression."""
    return METRIC_NAMES[data.task]


def _metric(task, out, y):
    if task == "classification":
        return jnp.mean((jnp.argmax(out, axis=-1) == y).astype(out.dtype))
    return jnp.mean(jnp.square(out - y))


def param_names(params) -> list[str]:
    """"0/W", "2/b", ...: each parameter leaf's path in the model."""
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
            for kp, _ in jax.tree_util.tree_leaves_with_path(params)]


def check_twin_optimizers(optimizer, reference_optimizer, params):
    """Raise a ValueError unless both optimizers keep states with the same leaves (the cross step shares one)."""
    mine, theirs = (jax.tree_util.tree_leaves(jax.eval_shape(o.init, params)) for o in (optimizer, reference_optimizer))
    if [(a.shape, a.dtype) for a in mine] != [(b.shape, b.dtype) for b in theirs]:
        raise ValueError(
            "train_twin: optimizer and reference_optimizer must be the same transformation written two ways "
            f"(their states hold {len(mine)} and {len(theirs)} arrays of different shapes); twin mode applies the "
            "reference optimizer to the manual path's state to check each step from identical inputs"
        )


def make_step(model, head, optimizers: dict, task: str, twin: bool = False):
    """The jitted step ``(state, x, y) -> (state, logs)``; state = {path: PathState}.

    ``optimizers`` maps each path ("manual", "reference") to its optax
    transformation. logs = {"<path>/loss", "<path>/<metric>"} and, in twin
    mode (both paths), "twin/<figure>": the per-step figures of
    ``manualbp.training.twin.twin_figures``. The same model, head, optimizer
    objects, task and mode give the same jitted function back, so a resumed
    run reuses the compiled step.
    """
    return _make_step(Keyed(model, head), tuple(optimizers.items()), task, twin)


@functools.lru_cache(maxsize=32)
def _make_step(key: Keyed, optimizers: tuple, task: str, twin: bool):
    model, head = key.value
    optimizers = dict(optimizers)
    metric = METRIC_NAMES[task]

    def advance(path, st, x, y):
        loss, grads, out, stats = _GRADIENTS[path](model, head, st.params, st.stats, x, y)
        updates, opt_state = optimizers[path].update(grads, st.opt_state, st.params)
        return PathState(optax.apply_updates(st.params, updates), opt_state, stats), loss, grads, updates, out

    def step(state, x, y):
        new, logs, seen = {}, {}, {}
        for path, st in state.items():
            new[path], loss, grads, updates, out = advance(path, st, x, y)
            logs[f"{path}/loss"], logs[f"{path}/{metric}"] = loss, _metric(task, out, y)
            seen[path] = (loss, grads, updates)
        if twin:
            m = state["manual"]
            ref_def = jax.tree_util.tree_structure(jax.eval_shape(optimizers["reference"].init, m.params))
            ref_state = jax.tree_util.tree_unflatten(ref_def, jax.tree_util.tree_leaves(m.opt_state))
            grads_m = seen["manual"][1]
            # the reference optimizer on the manual gradient, from the same state: checks the manual optimizer alone
            updates_ref, _ = optimizers["reference"].update(grads_m, ref_state, m.params)

            def reference_at(params, xb, yb):  # the reference gradient (at the manual path's own parameters)
                return loss_grads_outputs_stats(model, head, params, m.stats, xb, yb)[:2]

            figures = twin_figures(seen["manual"], reference_at, m.params, x, y, updates_ref, new["manual"].params,
                                   new["reference"].params)
            logs.update({f"twin/{name}": v for name, v in figures.items()})
        return new, logs

    return jax.jit(step)


def predict(model, params, stats, x, grad: str = "manual"):
    """The model's output in evaluation mode (BatchNorm with its running ``stats``), by the manual or reference forward."""
    if grad == "reference":
        return reference_forward_eval(model, params, stats, x)
    if hasattr(model, "forward_eval"):
        return model.forward_eval(params, stats, x)
    return model.forward(params, x)[0]


_PREDICT = jax.jit(lambda key, params, stats, x, grad: predict(key.value[0], params, stats, x, grad), static_argnums=(0, 4))


def predict_compiled(model, params, stats, x, grad: str = "manual"):
    """``predict`` compiled once per model (and the code it runs: ``Keyed``), shapes and path."""
    return _PREDICT(Keyed(model), params, stats, x, grad)


def evaluate(model, params, stats, data: Dataset, grad: str = "manual") -> float:
    """Test accuracy (classification) or test MSE (regression), in evaluation mode (running statistics)."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x = parallel.beside(params, as_array(as_inputs(data.x_test, dtype)))  # token ids stay integers
    y = parallel.beside(params, as_array(data.y_test if data.task == "classification" else data.y_test.astype(dtype)))
    return float(_metric(data.task, predict_compiled(model, params, stats, x, grad), y))
