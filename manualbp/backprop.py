"""value_and_grad by hand: forward through the model and head, then backward.

No autodiff anywhere: the gradient is the head's dL/dlogits pushed back
through every layer's hand-written ``backward``.
"""

from __future__ import annotations

from functools import partial

import jax

from manualbp.layers.arguments import check_fits, check_flag, check_head_object, check_layer_object, nbytes, size
from manualbp.layers.base import as_array, as_arrays, check_finite, checkify_values, describe, is_concrete, name_of
from manualbp.layers.code_key import Keyed
from manualbp.layers.walk import check_gradients


def loss_and_grads(model, head, params, x, y, mask=None):
    """(loss, dparams, dx, logits): one manual forward and backward pass, traceable under jit."""
    out, cache = model.forward(params, x)
    loss, head_cache = head.forward(out, y, mask)
    dout = head.backward(head_cache)
    grads, dx = model.backward(params, cache, dout)
    return loss, grads, dx, out


# compiled once per (model, head, the code they run: ``Keyed``), shapes and dtypes
@partial(jax.jit, static_argnums=0)
def _jitted(key: Keyed, params, x, y, mask):
    model, head = key.value
    loss, grads, _, _ = loss_and_grads(model, head, params, x, y, mask)
    return loss, grads


@partial(jax.jit, static_argnums=0)
def _jitted_checkified(key: Keyed, params, x, y, mask):
    """``_jitted`` with the value checks registered for checkify (its own cache: a trace without them is not reused)."""
    model, head = key.value
    with checkify_values():
        loss, grads, _, _ = loss_and_grads(model, head, params, x, y, mask)
    return loss, grads


def _arrays_of(tree):
    """The array leaves of a forward's cache (a cache may also hold static parts: shapes, flags)."""
    return [v for v in jax.tree_util.tree_leaves(tree) if isinstance(v, jax.Array)]


# the forward's output and the arrays it keeps for backward, evaluated abstractly (no FLOPs, nothing allocated)
_forward_abstract = jax.jit(lambda key, params, x: (lambda y, c: (y, _arrays_of(c)))(*key.value[0].forward(params, x)),
                            static_argnums=0)


def as_inputs(x, y, mask=None, *, where: str = "value_and_grad"):
    """(x, y, mask) as jax arrays: a Python list or numpy array is converted, a tuple x stays a tuple (e.g. (x, h0)).

    A leaf that is not an array of numbers (a str, None in x, an object) is a TypeError naming ``where``.
    """
    def convert(what, tree, one=False):
        try:
            return as_array(tree) if one else as_arrays(tree)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected {what} as arrays of numbers, got {describe(tree)}") from None

    if x is None:
        raise TypeError(f"{where}: expected x as an array (or a tuple of arrays), got None")
    return convert("x", x), convert("y", y, True), None if mask is None else convert("mask", mask, True)


def check_values(model, head, params, x, y, mask=None):
    """Raise a ValueError for invalid input VALUES while they are concrete, before any ``jax.jit``.

    Inside a jit every value is a tracer, so a layer cannot raise there (it
    gives NaN instead, see ``manualbp.layers.heads``). Call this first with the
    arrays you will pass in: ``value_and_grad`` does. It checks
    ``model.check_input(params, x)`` (Embedding ids in [0, vocab), for the
    layers that read x itself), then the head's labels and mask
    (``head.check_values``: labels in range, finite targets, a mask finite,
    >= 0 and not all zero) against the shape of the model's output, found by
    abstract evaluation (no FLOPs; cached per model and input shape). Shape and
    dtype errors of the forward surface here too. A no-op for traced values;
    ``check_input`` sees x even when part of it is traced (under the user's
    ``jax.jit``, lengths that the function captured are concrete beside a
    traced x) and checks the concrete parts.
    """
    x, y, mask = as_inputs(x, y, mask)
    if hasattr(model, "check_input"):
        model.check_input(params, x)
    if is_concrete((y, mask)) and hasattr(head, "check_values"):
        head.check_values(_output_shape(model, params, x), y, mask)


def _abstract_forward(model, params, x):
    """(y, the arrays of the cache) as ``jax.ShapeDtypeStruct``s: the forward evaluated abstractly (cached per model
    and input shapes, unless the model cannot be hashed)."""
    try:
        hash(model)
    except TypeError:  # e.g. a Dropout bound to a traced key inside the user's jit
        return jax.eval_shape(lambda p, v: (lambda y, c: (y, _arrays_of(c)))(*model.forward(p, v)), params, x)
    return _forward_abstract.eval_shape(Keyed(model), params, x)


def _output_shape(model, params, x):
    """The model's output shape and dtype, by abstract evaluation."""
    return _abstract_forward(model, params, x)[0]


def check_pass_fits(model, params, x, where: str = "value_and_grad"):
    """Raise a ValueError, before anything is allocated, when one forward and backward cannot fit in memory.

    The need counted: x, the parameters and their gradients, the output and the arrays the forward
    keeps for backward (its cache), from an abstract evaluation of the forward (static shapes: this
    works under tracing too). XLA needs more (temporaries), so a pass refused here could never run.
    """
    y, cache = _abstract_forward(model, params, x)
    need = nbytes(x) + 2 * nbytes(params) + nbytes(y) + nbytes(cache)
    check_fits(where, f"one pass of {name_of(model)} on x {describe(x)} (x, parameters and gradients, and "
                      f"{size(nbytes(cache))} kept for backward)", need, "use a smaller batch or input")


def value_and_grad(model, head, *, jit: bool = True, check: bool = True, checkify: bool = False):
    """Return ``f(params, x, y, mask=None) -> (loss, grads)`` computed by manual backprop.

    Args:
      model: a layer (usually ``Sequential``).
      head: a loss head (``SoftmaxCrossEntropy``, ...).
      jit: compile the step (once per model/head/shape/dtype).
      check: when called eagerly, raise a ValueError naming the first input
        or parameter gradient holding NaN/Inf (explosion). Skipped when ``f``
        is itself traced by an outer ``jax.jit``.

      checkify: register the value checks as ``jax.experimental.checkify``
        checks when ``f`` is traced (``base.checkify_values``); off by default,
        since a registered check costs time in every compiled step.

    The value checks of ``check_values`` (labels, ids, mask) run whenever the
    inputs are concrete, jit or not. Under an outer ``jax.jit`` an invalid
    value gives a NaN loss and NaN gradient instead; to get the error, build
    ``f`` with ``checkify=True`` and run it under checkify:
    ``err, out = checkify.checkify(jax.jit(f))(params, x, y); err.throw()``.

    ``grads`` has exactly the structure of ``params``, so
    ``optax.GradientTransformation.update`` consumes it unchanged.

    Raises TypeError at once for a ``model`` that is not a layer, a ``head`` that is not a loss
    head, or a flag that is not a bool; ``f`` raises for invalid inputs (``check_values``) and for
    a pass that cannot fit in memory (``check_pass_fits``), before anything is computed.
    """
    check_layer_object("value_and_grad", model)
    check_head_object("value_and_grad", head)
    for name, flag in (("jit", jit), ("check", check), ("checkify", checkify)):
        check_flag("value_and_grad", name, flag)

    def f(params, x, y, mask=None):
        x, y, mask = as_inputs(x, y, mask)
        check_values(model, head, params, x, y, mask)
        check_pass_fits(model, params, x)
        if check and is_concrete((params, x)):
            check_finite(name_of(model), "input x", x)
            check_finite(name_of(model), "params", params)
        with checkify_values(checkify):
            if jit:
                loss, grads = (_jitted_checkified if checkify else _jitted)(Keyed(model, head), params, x, y, mask)
            else:
                loss, grads, _, _ = loss_and_grads(model, head, params, x, y, mask)
        check_gradients(model, params, grads, "value_and_grad")
        if check and is_concrete((loss, grads)):
            check_finite(name_of(model), "loss", loss)
            check_finite(name_of(model), "gradient (exploding gradients? try clipping)", grads)
        return loss, grads

    return f
