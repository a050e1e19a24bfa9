"""One jitted training step for the manual path, the reference path, or both in lockstep (twin mode).

gradients -> ``optimizer.update`` -> ``optax.apply_updates``, per path. The
step closes over the model, head and optimizers (static), so it compiles
once per run and every later step reuses it; losses and metrics stay on the
device as the step's logs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from manualbp.backprop import loss_and_grads
from manualbp.reference.dispatch import apply as reference_apply
from manualbp.reference.grad import loss_grads_outputs
from manualbp.training.data import Dataset, as_inputs
from manualbp.training.twin import parameter_differences
from manualbp.verify.tolerances import Tolerance

GRADS = ("manual", "reference")


def _manual_step_grads(model, head, params, x, y):
    loss, grads, _, out = loss_and_grads(model, head, params, x, y)
    return loss, grads, out


_GRADIENTS = {"manual": _manual_step_grads, "reference": loss_grads_outputs}
_FORWARDS = {
    "manual": jax.jit(lambda model, params, x: model.forward(params, x)[0], static_argnums=0),
    "reference": jax.jit(reference_apply, static_argnums=0),
}


_METRIC_NAMES = {"classification": "accuracy", "regression": "mse"}


def metric_name(data: Dataset) -> str:
    """"accuracy" for classification, "mse" (mean squared error, not halved) for regression."""
    return _METRIC_NAMES[data.task]


def _metric(task, out, y):
    if task == "classification":
        return jnp.mean((jnp.argmax(out, axis=-1) == y).astype(out.dtype))
    return jnp.mean(jnp.square(out - y))


def param_names(params) -> list[str]:
    """"0/W", "2/b", ...: each parameter leaf's path in the model."""
    return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
            for kp, _ in jax.tree_util.tree_leaves_with_path(params)]



def make_step(model, head, optimizers: dict, task: str, tol: Tolerance | None = None):
    """The jitted step ``(state, x, y) -> (state, logs)``; state = {path: (params, opt_state)}.

    ``optimizers`` maps each path ("manual", "reference") to its optax
    transformation. logs = {"<path>/loss", "<path>/<metric>"} and, with both
    paths and a tolerance, "diff" of shape (n_params, 3) (see ``parameter_differences``).
    The same model, head, optimizer objects, task and tolerance give the same
    jitted function back, so a resumed run reuses the compiled step.
    """
    return _make_step(model, head, tuple(optimizers.items()), task, tol)


@functools.lru_cache(maxsize=32)
def _make_step(model, head, optimizers: tuple, task: str, tol: Tolerance | None):
    optimizers = dict(optimizers)

    def step(state, x, y):
        new, logs = {}, {}
        for path, (params, opt_state) in state.items():
            loss, grads, out = _GRADIENTS[path](model, head, params, x, y)
            updates, opt_state = optimizers[path].update(grads, opt_state, params)
            new[path] = (optax.apply_updates(params, updates), opt_state)
            logs[f"{path}/loss"] = loss
            logs[f"{path}/{_METRIC_NAMES[task]}"] = _metric(task, out, y)
        if len(new) == 2 and tol is not None:
            logs["diff"] = parameter_differences(new["manual"][0], new["reference"][0], tol)
        return new, logs

    return jax.jit(step)


def evaluate(model, params, data: Dataset, grad: str = "manual") -> float:
    """Test accuracy (classification) or test MSE (regression) of ``params``, via the manual or reference forward."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x = jnp.asarray(as_inputs(data.x_test, dtype))  # token ids stay integers
    y = jnp.asarray(data.y_test if data.task == "classification" else data.y_test.astype(dtype))
    out = _FORWARDS[grad](model, params, x)
    return float(_metric(data.task, out, y))

