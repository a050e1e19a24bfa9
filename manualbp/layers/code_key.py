"""A key for compiled programs that changes whenever the code that runs changes.

``jax.jit`` with a layer as a static argument caches the compiled program under the layer's hash,
which a frozen dataclass takes from its hyperparameters alone. Patch a class's ``backward`` after a
first run (as a user fixing a derivation in a notebook does) and the same hash would hand back the
program of the OLD backward: a verdict on code that no longer exists. ``Keyed`` wraps the static
objects with the functions of every class they are made of (every layer inside them, their heads),
so a patched method, a re-registered reference or a redefined class is a new key and a new trace.
"""

from __future__ import annotations

import dataclasses
import types

_FUNCTIONS = (types.FunctionType, staticmethod, classmethod, property)


def _objects(obj, seen: set, out: list):
    """``obj`` and every object it holds in dataclass fields, tuples, lists and dict values (once each)."""
    if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool, type)):
        return
    seen.add(id(obj))
    out.append(obj)
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _objects(getattr(obj, f.name, None), seen, out)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _objects(item, seen, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _objects(item, seen, out)


def _class_code(cls) -> tuple:
    """The functions defined by ``cls`` and its bases (hashed by identity: a patched method is another object)."""
    return tuple((c, name, v) for c in cls.__mro__ if c is not object
                 for name, v in sorted(vars(c).items()) if isinstance(v, _FUNCTIONS))


def _found(objs) -> list:
    found: list = []
    for obj in objs:
        _objects(obj, set(), found)
    return found


def classes_of(*objs) -> tuple:
    """Every class the objects are made of (the objects, and every object they hold), once each."""
    return tuple(dict.fromkeys(type(o) for o in _found(objs)))


def code_of(*objs) -> tuple:
    """Every class the objects are made of, with the functions each defines, plus any function they hold."""
    found = _found(objs)
    held = tuple(o for o in found if isinstance(o, (types.FunctionType, types.MethodType)))
    return tuple(_class_code(c) for c in dict.fromkeys(type(o) for o in found)) + held


class Keyed:
    """A hashable static argument: ``value`` (a tuple of objects) with the code it runs as part of its key.

    ``extra`` adds what else decides the program (e.g. the reference forwards registered for the
    layer types); it must be hashable.
    """

    __slots__ = ("value", "_key")

    def __init__(self, *value, extra=()):
        self.value = value
        self._key = (value, code_of(*value), extra)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, Keyed) and self._key == other._key
