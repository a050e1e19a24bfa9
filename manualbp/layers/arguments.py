"""The arguments that are not data: PRNG keys, layers, heads, functions, flags, counts, init's shape and dtype, sizes.

Arrays get their checks in ``base`` (shape, dtype, values); this module checks what a caller hands
manualbp besides them, each with a TypeError/ValueError that names the function (``where``) and
says what was expected and what came, before JAX or Python meet the argument and say something
of their own (``'int' object is not callable``, "invalid PRNG key data", XLA's RESOURCE_EXHAUSTED).

Sizes: ``check_fits`` refuses, before anything is allocated, a computation whose arrays cannot
fit in the memory of the device (``memory_bytes``: the accelerator's memory, or the host's
physical memory on a CPU), naming the layer and the size.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import traceback

import jax
import jax.numpy as jnp
import numpy as np

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # manualbp/
# the random draw of an init's largest array: measured on XLA CPU, jax.random.normal of n float32 entries asks for one
# buffer of 12 n bytes (its bits and two float intermediates) besides its result
DRAW_FACTOR = 3


def _what(v) -> str:
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        dtype = getattr(v.dtype, "name", None) or str(v.dtype)
        return f"{dtype}[{','.join(map(str, v.shape))}]"
    if isinstance(v, type):
        return f"the class {v.__name__}"
    return f"{type(v).__name__} {v!r}" if isinstance(v, (int, float, str, bool)) or v is None else type(v).__name__


def as_key(where: str, key):
    """A typed PRNG key from a typed key or raw uint32[2] key data (``jax.random.PRNGKey``), concrete or traced.

    TypeError naming ``where`` otherwise (an int seed, a float array, an array of keys).
    """
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"{where}: expected a single PRNG key, got an array of keys of shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    hint = f"; for a seed use jax.random.key({key})" if isinstance(key, numbers.Integral) else ""
    raise TypeError(f"{where}: expected a PRNG key (jax.random.key(seed)), got {_what(key)}{hint}")


def check_layer_object(where: str, layer, what: str = "model"):
    """Raise a TypeError unless ``layer`` is a layer INSTANCE (an object with ``forward`` and ``backward``)."""
    if isinstance(layer, type):
        raise TypeError(f"{where}: expected {what} to be a layer instance, got {_what(layer)}; build one, e.g. "
                        f"{layer.__name__}(...)")
    if not (callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None))):
        raise TypeError(f"{where}: expected {what} to be a layer (an object with forward(params, x) and "
                        f"backward(params, cache, dy)), got {_what(layer)}")


def check_head_object(where: str, head):
    """Raise a TypeError unless ``head`` is a loss head instance: ``forward(logits, labels, mask)``, ``backward(cache)``.

    A layer is not a head: its ``backward`` takes (params, cache, dy) and it computes no loss.
    """
    from manualbp.layers.base import Layer

    if isinstance(head, type):
        raise TypeError(f"{where}: expected head to be a loss head instance, got {_what(head)}; build one, e.g. "
                        f"{head.__name__}()")
    if isinstance(head, Layer) or not (callable(getattr(head, "forward", None))
                                       and callable(getattr(head, "backward", None))):
        raise TypeError(f"{where}: expected head to be a loss head (forward(logits, labels, mask) -> (loss, cache), "
                        f"backward(cache) -> dlogits, e.g. mbp.SoftmaxCrossEntropy()), got {_what(head)}")


def check_callable(where: str, what: str, fn, form: str = ""):
    """Raise a TypeError unless ``fn`` is callable (a class counts only when ``form`` allows it, never here)."""
    if not callable(fn) or isinstance(fn, type):
        raise TypeError(f"{where}: expected {what} to be a function{' ' + form if form else ''}, got {_what(fn)}")


def check_flag(where: str, name: str, value) -> bool:
    """Raise a TypeError unless ``value`` is a bool (1 and "yes" are not)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {_what(value)}")
    return bool(value)


def check_count(where: str, name: str, value, *, minimum: int = 1) -> int:
    """Raise unless ``value`` is an int (not a bool, not a float) >= ``minimum``; returns it as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int >= {minimum}, got {_what(value)}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_number(where: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> float:
    """Raise unless ``value`` is a real number (not a bool), finite, within [low, high] (open ends as asked)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {_what(value)}")
    v = float(value)
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    if (not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low)))
            or (high is not None and (v > high or (high_open and v == high)))):
        bounds = " and ".join(filter(None, [lo, hi])) or "finite"
        raise ValueError(f"{where}: {name} must be {'finite and ' if bounds != 'finite' else ''}{bounds}, got {value!r}")
    return v


def check_input_shape(where: str, shape):
    """Raise unless ``shape`` (an init's input shape, batch excluded) is a tuple of int sizes >= 1, or of such tuples.

    A tuple input's shape is a tuple of shapes (``((T, D), ())`` for x and lengths); ``()`` is a
    scalar per example. A size of 0 would make an empty parameter or activation, a negative one no
    array at all.
    """
    def bad(why):
        return ValueError(f"{where}: expected an input shape (a tuple of sizes >= 1, batch excluded), got {shape!r}"
                          f"{why}")

    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"{where}: expected an input shape as a tuple of sizes (batch excluded, e.g. (4,)), got "
                        f"{_what(shape)}")

    def visit(s):
        for n in s:
            if isinstance(n, (tuple, list)):
                visit(n)
            elif isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
                raise bad(f": the size {n!r} is not an int")
            elif n < 1:
                raise bad(f": a size of {n} makes {'an empty' if n == 0 else 'no'} array")

    visit(shape)


def check_float_dtype(where: str, dtype):
    """The ``np.dtype`` of ``dtype``, raising a TypeError unless it is a floating dtype jax can make now."""
    try:
        want = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be a floating dtype (float32, float64, bfloat16, float16), got "
                        f"{dtype!r}") from None
    if not jnp.issubdtype(want, jnp.floating):
        raise TypeError(f"{where}: dtype must be a floating dtype (float32, float64, bfloat16, float16), got "
                        f"{want.name}; parameters are real numbers")
    got = np.dtype(jax.dtypes.canonicalize_dtype(want))
    if got != want:
        raise TypeError(
            f"{where}: dtype {want.name} needs jax's 64-bit mode, which is off (jax would make "
            f"{got.name} arrays instead); call jax.config.update(\"jax_enable_x64\", True) at the start of the "
            f"program, before any array is created, or use float32"
        )
    return want


def memory_bytes() -> int:
    """The memory of the default device: an accelerator's own (its allocator's limit), else the host's physical memory."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 (a backend without memory statistics)
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound
        return 1 << 62


def nbytes(tree) -> int:
    """Bytes of every array (or ``jax.ShapeDtypeStruct``) leaf of ``tree``."""
    return sum(int(np.prod(leaf.shape, dtype=np.float64)) * leaf.dtype.itemsize  # a PRNG key's dtype has one too
               for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "shape") and hasattr(leaf, "dtype"))


def size(n: float) -> str:
    """``n`` bytes in words: '16.0 GB', '512 B'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_fits(where: str, what: str, need: float, hint: str = ""):
    """Raise a ValueError (before anything is allocated) if ``need`` bytes exceed the device's memory."""
    have = memory_bytes()
    if need > have:
        raise ValueError(f"{where}: {what} need {size(need)}, more than the {size(have)} of memory of "
                         f"{jax.devices()[0].platform.upper()} device 0{'; ' + hint if hint else ''}")


_SIZING = [False]  # a stack: is an init being sized (abstractly) already? Then the layers inside it are not sized again


def _largest(tree) -> tuple:
    """(path, leaf) of the largest array leaf of ``tree``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return max(leaves, key=lambda kl: nbytes(kl[1]), default=((), None))


def check_init_fits(layer, init, key, input_shape, dtype):
    """Refuse an ``init`` whose parameters (and the random draw of the largest) cannot fit in memory.

    The sizes come from ``jax.eval_shape`` of the init itself (nothing is allocated); the need is
    the parameters' bytes plus ``DRAW_FACTOR`` times the largest array's (``jax.random.normal``'s
    working memory). Only the outermost init is sized: the layers inside it are part of its tree.
    """
    if _SIZING[-1]:
        return
    _SIZING.append(True)
    try:
        params, _ = jax.eval_shape(lambda k: init(layer, k, input_shape, dtype), key)
    finally:
        _SIZING.pop()
    total = nbytes(params)
    path, leaf = _largest(params)
    if leaf is None:
        return
    need = total + DRAW_FACTOR * nbytes(leaf)
    if need > memory_bytes():
        from manualbp.layers.base import name_of

        where = jax.tree_util.keystr(path)
        check_fits(f"{name_of(layer)}.init", f"its parameters ({size(total)}; the largest, {where or 'the array'}, "
                                             f"{_what(leaf)}) and the random draw of the largest", need,
                   "make the layer smaller (fewer features, a smaller vocabulary or input)")


@contextlib.contextmanager
def sizing_done():
    """Within this block, ``check_init_fits`` does nothing (the caller sized the whole init already)."""
    _SIZING.append(True)
    try:
        yield
    finally:
        _SIZING.pop()


def raised_by_manualbp(e: BaseException) -> bool:
    """Whether the innermost frame of ``e``'s traceback is manualbp's own code (its message is then ours)."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE)
