"""Gradients from jax.grad: of the model, of every tap, of one layer (vjp), and of a training step."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from manualbp.layers.code_key import Keyed, classes_of

from .dispatch import Taps, apply, forward, forward_train, head_forward


def _key(model, head) -> Keyed:
    """(model, head) as a static argument whose key holds the code that runs: their classes' methods and the
    reference forward registered for each class (a re-registered reference is a new program, not a stale one)."""
    return Keyed(model, head, extra=tuple(forward.dispatch(c) for c in classes_of(model, head)))


def _loss(model, head, params, x, y, mask, taps=None):
    return head_forward(head, apply(model, params, x, taps), y, mask)


@partial(jax.jit, static_argnums=0)
def _value_and_grad(key, params, x, y, mask):
    return jax.value_and_grad(partial(_loss, *key.value))(params, x, y, mask)


def value_and_grad(model, head, *, jit: bool = True):
    """Return ``f(params, x, y, mask=None) -> (loss, grads)`` from ``jax.value_and_grad``."""

    def f(params, x, y, mask=None):
        x, y = jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(y)  # x may be a tuple, e.g. (x, h0)
        mask = None if mask is None else jnp.asarray(mask)
        if jit:
            return _value_and_grad(_key(model, head), params, x, y, mask)
        return jax.value_and_grad(partial(_loss, model, head))(params, x, y, mask)

    return f


def trace(model, head, params, x, y, mask=None):
    """Every intermediate value and gradient, keyed "<layer path>|<kind>" (compiled once per model, head and shapes).

    Returns a dict with ``loss``, ``grads`` (dL/dparams), ``outputs`` (the
    forward value at every tap) and ``taps`` (dL/d(value) at every tap):
    kind "in" is a layer's input, "out" its output, others are
    layer-specific (e.g. "h" for a recurrent layer's hidden states).
    """
    return _trace(_key(model, head), params, x, y, mask)


@partial(jax.jit, static_argnums=0)
def _trace(key, params, x, y, mask):
    model, head = key.value
    recorder = Taps(values=None)
    apply(model, params, x, recorder)
    zeros, outputs = recorder.zeros, recorder.outputs

    def loss_fn(params, tap_values):
        return _loss(model, head, params, x, y, mask, Taps(values=tap_values))

    loss, (grads, dtaps) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, zeros)
    return {"loss": loss, "grads": grads, "outputs": outputs, "taps": dtaps}


def vjp_layer(fn, params, x, dy):
    """(y, dparams, dx) of ``y = fn(params, x)`` from ``jax.vjp`` with cotangent ``dy``.

    dx has x's structure with None at every integer leaf (ids, lengths: no
    gradient), and is None when no leaf of x is floating.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    floating = [jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in leaves]
    if all(floating):
        y, pullback = jax.vjp(fn, params, x)
        dparams, dx = pullback(dy)
        return y, dparams, dx

    def with_floats(p, floats):
        it = iter(floats)
        return fn(p, jax.tree_util.tree_unflatten(treedef, [next(it) if f else a for a, f in zip(leaves, floating)]))

    y, pullback = jax.vjp(with_floats, params, [a for a, f in zip(leaves, floating) if f])
    dparams, dfloats = pullback(dy)
    if not dfloats:
        return y, dparams, None
    it = iter(dfloats)
    return y, dparams, jax.tree_util.tree_unflatten(treedef, [next(it) if f else None for f in floating])


def loss_grads_outputs(model, head, params, x, y, mask=None):
    """(loss, dL/dparams, outputs) of the reference forward; traceable under jit.

    The outputs come out of the same forward as the gradient (``has_aux``), so
    a training step's accuracy costs no second forward.
    """

    def loss_fn(p):
        out = apply(model, p, x)
        return head_forward(head, out, y, mask), out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, out


def loss_grads_outputs_stats(model, head, params, stats, x, y, mask=None, head_dtype=None):
    """(loss, dL/dparams, outputs, running stats): ``loss_grads_outputs`` that also advances BatchNorm's running
    statistics from the same training-mode forward (``stats``: keyed by layer path, {} for a model without any).

    ``head_dtype``: the loss on the outputs cast to at least that dtype (mixed precision: a bfloat16 model, its
    loss in float32); None: in the outputs' own dtype.
    """

    def loss_fn(p):
        out, new = forward_train(model, p, stats, x)
        wide = out if head_dtype is None else out.astype(jnp.promote_types(out.dtype, head_dtype))
        return head_forward(head, wide, y, mask), (out, new)

    (loss, (out, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, out, new
