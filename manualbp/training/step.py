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

Mixed precision (``compute_dtype``, e.g. bfloat16 with float32 parameters:
the usual GPU recipe): the parameters stay in their own dtype (the master
weights) and so do the optimizer's state and update; each step casts them
and the inputs x to ``compute_dtype``, runs the model's forward and backward
there (either path), the loss head in the parameters' dtype (the logits
cast up, dL/dlogits cast down: a bfloat16 softmax cross-entropy of a
confident batch rounds to exactly 0), and casts the gradients back to the
parameters' dtype for the optimizer. bfloat16 has float32's exponent range,
so no loss scaling. The twin's cross evaluation is taken at the same cast
parameters and batch, so manual and reference still compute the same
numbers, each with ``compute_dtype``'s rounding (judged with its tolerance).
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


def _manual(model, head, params, stats, x, y, head_dtype=None):
    """(loss, grads, logits, stats): ``backprop.loss_and_grads``, keeping the forward's cache for the running stats;
    ``head_dtype``: the head on the outputs cast to at least that dtype, its dL/dlogits cast back."""
    out, cache = model.forward(params, x)
    wide = out if head_dtype is None else out.astype(jnp.promote_types(out.dtype, head_dtype))
    loss, head_cache = head.forward(wide, y)
    grads, _ = model.backward(params, cache, head.backward(head_cache).astype(out.dtype))
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


def cast_floats(tree, dtype):
    """``tree`` with every floating array in ``dtype`` (integers, e.g. labels and token ids, as they are); ``dtype``
    None: ``tree`` itself."""
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _like(tree, like):
    """``tree`` with each array in the dtype of the matching array of ``like`` (gradients back to the parameters')."""
    return jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), tree, like)


def make_step(model, head, optimizers: dict, task: str, twin: bool = False, compute_dtype=None):
    """The jitted step ``(state, x, y) -> (state, logs)``; state = {path: PathState}.

    ``optimizers`` maps each path ("manual", "reference") to its optax
    transformation. logs = {"<path>/loss", "<path>/<metric>"} and, in twin
    mode (both paths), "twin/<figure>": the per-step figures of
    ``manualbp.training.twin.twin_figures``. ``compute_dtype``: the forward
    and backward in that dtype, parameters and optimizer in theirs (module
    docstring); None: all in the parameters' dtype. The same model, head,
    optimizer objects, task, mode and compute dtype give the same jitted
    function back, so a resumed run reuses the compiled step.
    """
    compute = None if compute_dtype is None else jnp.dtype(compute_dtype).name
    return _make_step(Keyed(model, head), tuple(optimizers.items()), task, twin, compute)


@functools.lru_cache(maxsize=32)
def _make_step(key: Keyed, optimizers: tuple, task: str, twin: bool, compute: str | None = None):
    model, head = key.value
    optimizers = dict(optimizers)
    metric = METRIC_NAMES[task]

    def advance(path, st, x, y):
        params = cast_floats(st.params, compute)  # the compute copy of the master weights
        head_dtype = None if compute is None else jax.tree_util.tree_leaves(st.params)[0].dtype
        loss, grads, out, stats = _GRADIENTS[path](model, head, params, st.stats, x, y, head_dtype=head_dtype)
        master = grads if compute is None else _like(grads, st.params)
        updates, opt_state = optimizers[path].update(master, st.opt_state, st.params)
        stats = stats if compute is None else _like(stats, st.stats)
        return PathState(optax.apply_updates(st.params, updates), opt_state, stats), loss, grads, master, updates, out

    def step(state, x, y):
        x = cast_floats(x, compute)  # y (labels, or regression targets for the head) stays as it is
        new, logs, seen = {}, {}, {}
        for path, st in state.items():
            new[path], loss, grads, master, updates, out = advance(path, st, x, y)
            logs[f"{path}/loss"], logs[f"{path}/{metric}"] = loss, _metric(task, out.astype(loss.dtype), y)
            seen[path] = (loss, grads, master, updates)
        if twin:
            m = state["manual"]
            ref_def = jax.tree_util.tree_structure(jax.eval_shape(optimizers["reference"].init, m.params))
            ref_state = jax.tree_util.tree_unflatten(ref_def, jax.tree_util.tree_leaves(m.opt_state))
            loss_m, grads_m, master_m, updates_m = seen["manual"]
            # the reference optimizer on the manual gradient, from the same state: checks the manual optimizer alone
            updates_ref, _ = optimizers["reference"].update(master_m, ref_state, m.params)

            def reference_at(params, xb, yb):  # the reference gradient (at the manual path's own parameters)
                head_dtype = None if compute is None else jax.tree_util.tree_leaves(m.params)[0].dtype
                return loss_grads_outputs_stats(model, head, params, m.stats, xb, yb, head_dtype=head_dtype)[:2]

            # both gradients at the same point: the manual path's parameters as its step computed with them
            figures = twin_figures((loss_m, grads_m, updates_m), reference_at, cast_floats(m.params, compute), x, y,
                                   updates_ref, new["manual"].params, new["reference"].params)
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
