"""What a DIVERGED twin run's first diverging gradient IS: the step replayed, the two gradients fitted.

A twin step keeps figures (a normwise difference per parameter), not gradients. When the verdict is
DIVERGED on a gradient, ``diagnose_first_failure`` replays the manual path up to the step before (the
run is deterministic: the same batches from the same key, the same optimizer), takes the manual and the
reference gradient at that point on that step's batch, and fits the failing parameter's difference
(``manualbp.verify.forensics``) within the twin's own allowance at that step (its fixed tolerance, or K
times the reference's own rounding measured there). A replay costs at most the run itself; a bug in a
backward usually diverges at step 1, where it costs one step.
"""

from __future__ import annotations

import jax
import numpy as np

from manualbp.backprop import value_and_grad
from manualbp.layers.walk import walk
from manualbp.reference import value_and_grad as reference_value_and_grad
from manualbp.training.data import Batches, as_inputs
from manualbp.verify.forensics import Diagnosis, context_for, diagnose


def _layer_of(model, params, name: str):
    """The layer holding parameter ``name`` ("2/attn/Wq": the layer at path "2/attn")."""
    path = name.rsplit("/", 1)[0] if "/" in name else ""
    return next((layer for p, layer, _ in walk(model, params) if p == path), model)


def diagnose_first_failure(model, head, params, data, *, train, optimizer, batch_size: int, key, divergence,
                           names: list, compute_dtype=None) -> Diagnosis | None:
    """The diagnosis of ``divergence``'s first failure when it is a gradient (None otherwise).

    ``train``: the plain training function (``manualbp.training.train.train``), run for the steps before with
    the run's own settings (``compute_dtype``); both gradients are then taken in the parameters' dtype.
    """
    first = divergence.first_failure
    if first is None or first["kind"] != "gradient":
        return None
    step = first["step"]
    if step > 1:
        params = train(model, head, params, data, optimizer=optimizer, steps=step - 1, batch_size=batch_size,
                       key=key, compute_dtype=compute_dtype).params
    batches = Batches(len(data.x_train), batch_size, key)
    for _ in range(step):
        idx = batches.next()
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    x = as_inputs(data.x_train, dtype)[idx]
    y = data.y_train[idx] if data.task == "classification" else np.asarray(data.y_train[idx], dtype)
    manual = value_and_grad(model, head)(params, x, y)[1]
    reference = reference_value_and_grad(model, head)(params, x, y)[1]
    i = names.index(first["parameter"])
    m, r = (np.asarray(jax.tree_util.tree_leaves(g)[i]) for g in (manual, reference))
    allowed = max(divergence.tolerance.norm, divergence.noise_factor * first["noise"])
    ctx = context_for(_layer_of(model, params, first["parameter"]), np.shape(r), batch=batch_size, is_param=True)
    return diagnose(m, r, allowed, ctx)
