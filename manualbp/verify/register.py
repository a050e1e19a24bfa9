"""A layer type of your own in whole-model comparisons: ``register_reference(LayerType, fn)``.

``compare``, ``check_layer`` (without ``reference=``) and ``train_twin`` find a
layer's reference forward by its type in ``manualbp.reference.forward`` (a
``functools.singledispatch`` function). This registers one for a user's type,
checking what ``singledispatch.register`` would reject with a cryptic message
or accept silently: the first argument must be the class (not an instance),
the function must take ``(layer, params, x)`` or ``(layer, params, x, taps)``,
and manualbp's own layer types keep the twin they ship with.
"""

from __future__ import annotations

import inspect

from manualbp import reference as ref


def _arity(fn) -> int:
    """3 or 4: how many positional arguments ``fn`` takes of (layer, params, x, taps); TypeError otherwise."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust the documented form
        return 4
    for n in (4, 3):
        try:
            signature.bind(*range(n))
        except TypeError:
            continue
        return n
    raise TypeError(
        f"register_reference: fn must take (layer, params, x) or (layer, params, x, taps) and return y, "
        f"got {getattr(fn, '__name__', type(fn).__name__)}{signature}"
    )


def register_reference(layer_type, fn=None):
    """Make ``fn`` the reference forward of every layer of type ``layer_type``; returns ``fn``.

    Args:
      layer_type: the layer's class, e.g. ``Scale`` (not an instance).
      fn: ``fn(layer, params, x) -> y`` written with library ops (``jnp``,
        ``jax.nn``, ``lax``), never calling the layer's own ``forward``: a wrong
        manual forward must not agree with itself. Read hyperparameters from
        ``layer``. The four-argument form ``fn(layer, params, x, taps)``
        receives the zero taps, for a layer that exposes per-step gradients
        (see ``manualbp.reference.recurrent_base``). Without ``fn``, returns a
        decorator: ``@mbp.register_reference(Scale)``.

    Equivalent to ``@manualbp.reference.forward.register`` on a function whose
    first parameter is annotated with the type (``def _(layer: Scale, params,
    x, taps)``), with the checks above.

    Raises:
      TypeError: ``layer_type`` is not a class, or ``fn`` has the wrong signature.
      ValueError: ``layer_type`` is one of manualbp's own layers (subclass it instead).
    """
    if not isinstance(layer_type, type):
        raise TypeError(
            f"register_reference: expected a layer class as the first argument (e.g. {type(layer_type).__name__}), "
            f"got an instance {layer_type!r}; pass type(layer)"
        )
    if not (callable(getattr(layer_type, "forward", None)) and callable(getattr(layer_type, "backward", None))):
        raise TypeError(
            f"register_reference: {layer_type.__name__} is not a layer class (its instances need forward(params, x) "
            "and backward(params, cache, dy)); pass the class of your layer"
        )
    module = getattr(layer_type, "__module__", "") or ""
    if module == "manualbp" or module.startswith("manualbp."):
        raise ValueError(
            f"register_reference: {layer_type.__name__} is one of manualbp's layers and keeps its own reference twin; "
            f"subclass it (class My{layer_type.__name__}({layer_type.__name__}): ...) and register the subclass"
        )
    if fn is None:
        return lambda f: register_reference(layer_type, f)
    if not callable(fn):
        raise TypeError(f"register_reference: fn must be a function (layer, params, x) -> y, got {fn!r}")
    if _arity(fn) == 4:
        ref.forward.register(layer_type, fn)
    else:
        ref.forward.register(layer_type, lambda layer, params, x, taps: fn(layer, params, x))
    return fn
