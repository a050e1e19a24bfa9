"""Window geometry shared by Conv2D and the pools: pairs, padding specs, output sizes.

Every function here works on static Python ints, so it runs at trace time
and raises a ValueError naming the layer before XLA sees a bad shape.
"""

from __future__ import annotations

Pair = tuple[int, int]
Pads = tuple[Pair, Pair]


def pair(layer: str, what: str, value) -> Pair:
    """``value`` (an int or a pair of ints, each >= 1) as a pair (height, width)."""
    items = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(items, (tuple, list))
        or len(items) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items)
    ):
        raise ValueError(f"{layer}: {what} must be a positive int or a pair of positive ints, got {value!r}")
    return (int(items[0]), int(items[1]))


def _is_nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_padding(layer: str, padding, *, explicit: bool = True):
    """Raise a ValueError unless ``padding`` is "SAME", "VALID" or (if ``explicit``) an int >= 0 or ((t, b), (l, r))."""
    if padding in ("SAME", "VALID"):
        return
    if explicit:
        if _is_nonneg_int(padding):
            return
        if (
            isinstance(padding, (tuple, list))
            and len(padding) == 2
            and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(map(_is_nonneg_int, p)) for p in padding)
        ):
            return
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'VALID', an int >= 0 or ((top, bottom), (left, right)) "
            f"of ints >= 0, got {padding!r}"
        )
    raise ValueError(f"{layer}: padding must be 'SAME' or 'VALID', got {padding!r}")


def effective(window: Pair, dilation: Pair) -> Pair:
    """Extent of a dilated window: (k - 1) d + 1 per axis."""
    return tuple((k - 1) * d + 1 for k, d in zip(window, dilation, strict=True))


def resolve_padding(padding, size: Pair, window: Pair, stride: Pair) -> Pads:
    """Explicit ((top, bottom), (left, right)) for a spatial ``size`` and an (effective) ``window``.

    SAME gives out = ceil(n / s) and pads total = max((out - 1) s + k - n, 0),
    the smaller half on top/left (XLA's and TensorFlow's rule).
    """
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        pads = []
        for n, k, s in zip(size, window, stride, strict=True):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(int(v) for v in p) for p in padding)


def output_size(layer: str, size: Pair, window: Pair, stride: Pair, pads: Pads, what: str = "window") -> Pair:
    """floor((n + lo + hi - k) / s) + 1 per axis; ValueError if the window exceeds the padded input."""
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(size, pads, strict=True))
    if any(k > p for k, p in zip(window, padded, strict=True)):
        raise ValueError(
            f"{layer}: {what} of (effective) size {window} is larger than the padded input "
            f"{padded} (input {tuple(size)}, padding {pads})"
        )
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, window, stride, strict=True))


def crop_negative_pads(a, pads, first_axis: int = 1):
    """``(a cropped, pads >= 0)``: every negative padding of ``pads`` done as a slice of ``a`` instead.

    ``pads`` pads the spatial axes ``first_axis, first_axis + 1, ...`` of ``a``. XLA's CPU convolution
    gives wrong sums (reads of memory outside the operand) for a negative low padding with a positive
    high padding on the same axis, so the manual convolutions never hand it a negative one: cropping
    by a slice and padding by the rest is the same operand.
    """
    from jax import lax

    for axis, (lo, hi) in enumerate(pads, start=first_axis):
        if lo < 0 or hi < 0:
            a = lax.slice_in_dim(a, max(-lo, 0), a.shape[axis] - max(-hi, 0), axis=axis)
    return a, [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
