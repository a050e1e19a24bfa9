"""What every mutant shares: the reference registration, and a cache that also holds the layer's x and y.

A mutant is a subclass of a real layer (or head) that overrides its backward, or one helper of it, with a
one-line bug. ``mutant_of(Original)`` registers the ORIGINAL's reference forward for the subclass, so the
reference computes exactly what the real layer's reference computes: manual and reference then differ in the
mutant's backward only, and every forward row must still pass.

``SeesIO`` keeps ``(the layer's own cache, x, y)`` as the cache, so a mutant's backward can read x and y
without knowing how the real layer lays out its cache (which other work may change); the forward's
values are the real layer's, unchanged.
"""

from __future__ import annotations

from manualbp import reference as ref


def mutant_of(original):
    """Class decorator: give the mutant ``original``'s reference forward (only the backward differs)."""

    def register(cls):
        assert issubclass(cls, original), f"{cls.__name__} must subclass {original.__name__}"
        ref.forward.register(cls)(ref.forward.dispatch(original))
        return cls

    return register


def head_mutant_of(original):
    """``mutant_of`` for a loss head: the reference loss of ``original``."""

    def register(cls):
        assert issubclass(cls, original), f"{cls.__name__} must subclass {original.__name__}"
        ref.head_forward.register(cls)(ref.head_forward.dispatch(original))
        return cls

    return register


class SeesIO:
    """Mixin for a layer mutant: forward's cache becomes (the layer's own cache, x, y)."""

    def forward(self, params, x):
        y, cache = super().forward(params, x)
        return y, (cache, x, y)

    def kink_pattern(self, cache):
        inner = super()
        return inner.kink_pattern(cache[0]) if hasattr(inner, "kink_pattern") else None


class HeadSeesIO:
    """Mixin for a head mutant: forward's cache becomes (the head's own cache, logits, labels, mask)."""

    def forward(self, logits, labels, mask=None):
        value, cache = super().forward(logits, labels, mask)
        return value, (cache, logits, labels, mask)


def per_feature(v, ndim):
    """(D,) -> (1, ..., 1, D): meets an array of rank ``ndim`` without implicit rank promotion."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def rows(a):
    """(T, B, K) -> (T B, K)."""
    return a.reshape(-1, a.shape[-1])
