"""Gradient forensics: what a failing row's mismatch IS, fitted against the reference, never guessed.

For a failing row with manual value m and reference r, each candidate explanation is fitted and the
simplest one whose residual is within the row's own tolerance (``verdict.allowance``) is reported:

* ``ZERO``: m = 0 (no gradient reaches the quantity at all);
* ``SIGN`` and ``SCALE``: m = a r, a fitted by least squares (a = -1 is its own kind), named as a simple
  fraction and, where one matches, by the layer's own sizes (batch N, time T, features, heads,
  sqrt(head_dim), 1 - dropout rate, device count);
* ``REARRANGED``: m = P(r) for P a transpose, an axis permutation, a flip along some axes, or a shift by
  one step along an axis (h_t used where h_(t-1) belongs);
* ``MISSING_PATH`` / ``EXTRA_PATH``: r - m (or m - r) = c q for another quantity q of the same report
  (the layer's own dL/dy: an identity path; one branch's dL/dx: a branch), c fitted and ~1;
* ``TERM``: a built-in backward written as a sum of named terms (``backward_terms``): m = sum a_i t_i
  with one coefficient off (LayerNorm's mean term missing, softmax's rowsum term);
* ``LOCALISED``: the error sits only on a named set (where the reference is exactly 0: masked or padded
  entries given a gradient, a ReLU's kink; the border of an image; some time steps; some channels,
  heads or rows) and is gross there, while the rest agrees within the tolerance;
* ``NONE`` ("no simple pattern") otherwise.

Every diagnosis carries the worst entries (index, got, want), so nobody has to print arrays to start. A
structured kind is given only when the difference is far above rounding (``_GROSS`` x the tolerance, or
a fitted parameter far from 1): a low-precision FAIL of correct code is rounding noise, spread
everywhere, and gets "no simple pattern". Diagnoses are computed for failing rows only, so a passing
report costs nothing.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

ZERO, SIGN, SCALE, REARRANGED, MISSING_PATH, EXTRA_PATH, TERM, LOCALISED, NONE = (
    "zero", "sign", "scale", "rearranged", "missing path", "extra path", "term", "localised", "no simple pattern")
STRUCTURE = "structure"  # a quantity missing, extra or of another form: the row's note says which (verdict.structure_row)
KINDS = (ZERO, SIGN, SCALE, REARRANGED, MISSING_PATH, EXTRA_PATH, TERM, LOCALISED, STRUCTURE, NONE)

_WORST = 5  # entries shown
_GROSS = 10.0  # a localised error must exceed this multiple of the tolerance where it sits: rounding does not
_SET_FRACTION = 0.5  # a "localised" set covers at most this fraction of its axis (else the error is everywhere)


@dataclass
class Diagnosis:
    """What a failing row's difference is: ``kind`` (one of ``KINDS``), in words (``text``) and as data.

    ``params``: the fitted parameters (a factor, the axes, the other quantity's name, the index set);
    ``residual``: ||m - fit|| / max(||m||, ||r||) after the fit, ``allowed`` the row's own tolerance on it;
    ``worst``: the largest differences, ``[(index, got, want), ...]``.
    """

    kind: str
    text: str
    params: dict = field(default_factory=dict)
    residual: float | None = None
    allowed: float | None = None
    worst: list = field(default_factory=list)

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float):
                return v if math.isfinite(v) else str(v)
            if isinstance(v, (list, tuple)):
                return [clean(u) for u in v]
            if isinstance(v, dict):
                return {k: clean(u) for k, u in v.items()}
            if isinstance(v, (np.integer, np.floating)):
                return clean(v.item())
            return v

        return clean({"kind": self.kind, "text": self.text, "params": self.params, "residual": self.residual,
                      "allowed": self.allowed, "worst": [list(w) for w in self.worst]})

    def __str__(self) -> str:
        worst = "; ".join(f"{_index(i)}: got {_num(g)}, want {_num(w)}" for i, g, w in self.worst[:3])
        return f"{self.text}" + (f" [worst: {worst}]" if worst else "")


@dataclass
class Context:
    """What a diagnosis may name: the layer's sizes, the report's other quantities, its terms, its axes.

    ``sizes``: {description: positive number} (e.g. {"the batch size N": 64}); ``others``: {name: array}
    of the same report (a fit of r - m against each of the same shape); ``terms``: {name: array}, the
    manual backward's value as a sum of named terms; ``axes``: {axis: name} for the localised sets
    (e.g. {1: "time step", -1: "channel"}); ``spatial``: the axes of an image (border sets).
    """

    sizes: dict = field(default_factory=dict)
    others: dict = field(default_factory=dict)
    terms: dict = field(default_factory=dict)
    axes: dict = field(default_factory=dict)
    spatial: tuple = ()


def _num(v) -> str:
    return f"{v:.4g}"


def _index(i) -> str:
    return "[" + ", ".join(map(str, i)) + "]" if isinstance(i, tuple) and i else "[]"


def _norm(a) -> float:
    return float(np.linalg.norm(a)) if np.size(a) else 0.0


def worst_entries(m, r, n: int = _WORST) -> list:
    """The ``n`` entries where |m - r| is largest: ``[(index, got, want), ...]``."""
    m, r = np.asarray(m, np.float64), np.asarray(r, np.float64)
    if m.shape != r.shape or not m.size:
        return []
    diff = np.abs(m - r).ravel()
    diff = np.where(np.isnan(diff), np.inf, diff)
    top = np.argsort(-diff, kind="stable")[:n]
    return [(tuple(int(k) for k in np.unravel_index(j, m.shape)), float(m.ravel()[j]), float(r.ravel()[j]))
            for j in top if diff[j] > 0]


def _fraction(a: float, tol: float) -> str | None:
    """``a`` as a simple fraction p/q (q <= 1024) if it is one to within ``tol`` (relative), else None."""
    if not math.isfinite(a) or a == 0:
        return None
    f = Fraction(a).limit_denominator(1024)
    if f == 0 or abs(float(f) - a) > tol * abs(a):
        return None
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _named(a: float, sizes: dict, tol: float) -> str:
    """Which of the layer's sizes ``a`` is: "64 is the batch size N" (a or 1/a equal to a size, or its square root);
    every size that matches is named ("2 is num_heads, or sqrt(4) is sqrt of the head dimension 4")."""
    found = []
    for what, s in sizes.items():
        if not s or s == 1:
            continue
        for value, how in ((s, ""), (1 / s, ""), (math.sqrt(s), "sqrt of "), (1 / math.sqrt(s), "sqrt of ")):
            if abs(a - value) <= tol * abs(value):
                shown = f"{s:g}" if not how else f"sqrt({s:g})"
                found.append(f"{shown} is {how}{what}")
                break
    return ", or ".join(found)


class _Fit:
    def __init__(self, m, r, allowed):
        self.m, self.r, self.allowed = m, r, allowed
        self.scale = max(_norm(m), _norm(r))
        self.error = _norm(m - r) / self.scale if self.scale > 0 else 0.0

    def residual(self, fitted) -> float:
        return _norm(self.m - fitted) / self.scale if self.scale > 0 else 0.0

    def holds(self, fitted) -> float | None:
        res = self.residual(fitted)
        return res if res <= self.allowed else None


def _scale(fit: _Fit, ctx: Context):
    m, r = fit.m, fit.r
    rr = float(np.sum(r * r))
    if rr == 0:
        return None
    a = float(np.sum(m * r)) / rr
    res = fit.holds(a * r)
    if res is None or abs(a - 1) <= 10 * fit.allowed:  # a factor indistinguishable from 1 explains nothing
        return None
    if abs(a + 1) <= 10 * fit.allowed:
        return SIGN, "manual = -1 x reference: the sign is flipped", {"factor": a}, res
    frac = _fraction(a, max(fit.allowed * 10, 1e-9))
    named = _named(a, ctx.sizes, max(fit.allowed * 10, 1e-9))
    shown = frac or f"{a:.6g}"
    hint = ""
    if named:
        why = ("summed where it should average, or a factor applied twice" if abs(a) > 1 else
               "averaged where the gradient sums, or a factor dropped")
        if "rate" in named:
            why = "the 1/(1 - rate) scale forgotten, or applied twice"
        hint = f"; {named}: {why}?"
    return SCALE, f"manual = {shown} x reference{hint}", {"factor": a, "fraction": frac, "named": named}, res


def _zero(fit: _Fit, ctx: Context):
    del ctx
    if _norm(fit.m) <= fit.allowed * fit.scale and _norm(fit.r) > 0:
        return ZERO, "manual is 0 where the reference is not: no gradient reaches this quantity", {}, _norm(fit.m) / fit.scale
    return None


def _shift(a, axis, step):
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if step > 0:
        dst[axis], src[axis] = slice(step, None), slice(None, -step)
    else:
        dst[axis], src[axis] = slice(None, step), slice(-step, None)
    out[tuple(dst)] = a[tuple(src)]
    return out


def _rearranged(fit: _Fit, ctx: Context):
    del ctx
    r, nd = fit.r, fit.r.ndim
    candidates = []
    if nd >= 2:
        for perm in itertools.permutations(range(nd)):
            if perm != tuple(range(nd)) and tuple(r.shape[p] for p in perm) == r.shape:
                what = "transposed" if nd == 2 else f"with its axes permuted to {perm}"
                candidates.append((what, {"permutation": perm}, np.transpose(r, perm)))
    axes = [a for a in range(nd) if r.shape[a] > 1]
    for k in range(1, len(axes) + 1):
        for flip in itertools.combinations(axes, k):
            candidates.append((f"flipped along axis {', '.join(map(str, flip))}", {"flip": flip}, np.flip(r, flip)))
    for a in axes:
        for step in (1, -1):
            candidates.append((f"shifted by {step:+d} along axis {a}", {"axis": a, "shift": step}, _shift(r, a, step)))
    inner = [a for a in axes if a > 0]  # a placement off by one along several axes at once (an image's rows and columns)
    for steps in itertools.product((-1, 0, 1), repeat=len(inner)):
        moved = [(a, s) for a, s in zip(inner, steps) if s]
        if len(moved) >= 2:
            shifted = r
            for a, s in moved:
                shifted = _shift(shifted, a, s)
            what = " and ".join(f"{s:+d} along axis {a}" for a, s in moved)
            candidates.append((f"shifted by {what}", {"shifts": dict(moved)}, shifted))
    if nd == 2 and r.shape[0] != r.shape[1]:  # (dy^T x).reshape(W.shape): a transpose that a reshape hides
        candidates.append(("transposed, then reshaped back to its shape (a reshape where a transpose belongs)",
                           {"reshape_of_transpose": True}, r.T.reshape(r.shape)))
    best = None
    for what, params, fitted in candidates:
        res = fit.holds(fitted)
        if res is not None and (best is None or res < best[3]):
            best = (REARRANGED, f"manual = reference {what}", params, res)
    if best is None:  # a shift whose vacated edge holds something else (the padding placed on the other side)
        for what, params, fitted in candidates:
            if "shift" not in params and "shifts" not in params:
                continue
            inside = _shift(np.ones(r.shape, bool), params["axis"], params["shift"]) if "shift" in params else None
            if inside is None:
                inside = np.ones(r.shape, bool)
                for a, step in params["shifts"].items():
                    inside = _shift(inside, a, step)
            if inside.mean() < 1 - _SET_FRACTION:
                continue
            res = _norm(np.where(inside, fit.m - fitted, 0)) / fit.scale
            if res <= fit.allowed and (best is None or res < best[3]):
                best = (REARRANGED, f"manual = reference {what}, except on the edge it vacated (padding on the other "
                                    "side?)", {**params, "edge_excepted": True}, res)
    if best is None and r.size > 1:  # the same entries in another order, whatever the order
        res = _norm(np.sort(fit.m.ravel()) - np.sort(r.ravel())) / fit.scale
        if res <= fit.allowed:
            best = (REARRANGED, "manual holds the reference's entries in another order (an index mix-up: a reshape, "
                                "a transpose or a flip of some part)", {"permuted": True}, res)
    return best


def _paths(fit: _Fit, ctx: Context):
    """r - m = c q for another quantity q (a path missing or doubled), or = P(q) - q (q's term summed unreversed)."""
    best = None
    d = fit.r - fit.m
    for name, q in ctx.others.items():
        q = np.asarray(q, np.float64)
        if q.shape != d.shape or not np.any(q):
            continue
        for a in range(q.ndim):
            if q.shape[a] < 2 or a == 0:
                continue
            res = fit.holds(fit.r + q - np.flip(q, a))
            if res is not None and (best is None or res < best[3]):
                best = (REARRANGED, f"manual = reference with the term {name} added in its own order, not flipped "
                                    f"back along axis {a} (a sequence not re-reversed?)",
                        {"quantity": name, "flip": a}, res)
        c = float(np.sum(d * q)) / float(np.sum(q * q))
        for sign, kind, verb in ((1, MISSING_PATH, "is missing"), (-1, EXTRA_PATH, "is added once too often")):
            if abs(c - sign) <= 0.5 and best is None:  # the first that holds: ``others`` lists the row's own layer first
                res = fit.holds(fit.r - sign * q)
                if res is not None:
                    what = ("an identity path (dL/dy passed straight on)" if name.endswith("dL/dy") else
                            "a branch's or a layer's contribution" if "dL/dx" in name else name)
                    best = (kind, f"reference - manual = {'' if sign > 0 else '-'}{name}: {what} {verb}",
                            {"quantity": name, "coefficient": c}, res)
    return best


def _simple(c: float) -> float:
    """A fitted coefficient as the simple number it stands for (0, 1, 1/2, 2, -1, ...)."""
    return float(Fraction(c).limit_denominator(16)) if math.isfinite(c) else c


def _terms(fit: _Fit, ctx: Context):
    """m = sum a_i t_i over the backward's named terms, the a_i simple numbers, some of them not 1.

    The coefficients are fitted by least squares, rounded to the simple numbers they stand for, and the
    rounded sum must explain m within the tolerance (a least-squares coefficient itself carries the
    conditioning of the terms, far above the tolerance of a float64 row).
    """
    names = list(ctx.terms)
    ts = [np.asarray(ctx.terms[n], np.float64) for n in names]
    if len(ts) < 2 or any(t.shape != fit.r.shape for t in ts):
        return None
    A = np.stack([t.ravel() for t in ts], axis=1)
    coef = [_simple(float(c)) for c in np.linalg.lstsq(A, fit.m.ravel(), rcond=None)[0]]
    res = fit.holds((A @ np.asarray(coef)).reshape(fit.r.shape))
    off = [i for i, c in enumerate(coef) if c != 1]
    if res is None or not off or len(off) == len(names):
        return None

    def how(c):
        return "missing" if c == 0 else f"scaled by {_fraction(c, 1e-9) or f'{c:.4g}'}"

    said = "; ".join(f"the {names[i]} term is {how(coef[i])}" for i in off)
    return TERM, f"{said} (the other terms agree)", {"terms": {names[i]: coef[i] for i in off}}, res


def _listed(indices, n) -> str:
    last = " (the last)" if indices == [n - 1] else " (the first)" if indices == [0] else ""
    return ", ".join(map(str, indices)) + last


def _localised(fit: _Fit, ctx: Context):
    e = fit.m - fit.r
    if fit.error < _GROSS * fit.allowed:
        return None
    limit = fit.allowed * fit.scale
    sets = []
    zero = fit.r == 0
    if zero.any() and not zero.all():
        sets.append(("where the reference is exactly 0 (masked or padded entries, a kink)", {"where": "reference == 0",
                                                                                               "count": int(zero.sum())},
                     zero))
    dropped = (fit.m == 0) & ~zero
    if dropped.any() and not dropped.all():
        sets.append((f"where manual is exactly 0 and the reference is not ({int(dropped.sum())} of {e.size} entries: "
                     "a gradient dropped on part of the input, e.g. one side of a kink)",
                     {"where": "manual == 0", "count": int(dropped.sum())}, dropped))
    if ctx.spatial:
        border = np.zeros(e.shape, bool)
        for a in ctx.spatial:
            idx = [slice(None)] * e.ndim
            for end in (0, -1):
                idx[a] = end
                border[tuple(idx)] = True
        if not border.all():
            sets.append(("on the border (padding)", {"where": "border"}, border))
    for a in range(e.ndim):
        n = e.shape[a]
        if n < 2:
            continue
        energy = np.sum(np.moveaxis(e, a, 0).reshape(n, -1) ** 2, axis=1)
        order = np.argsort(-energy, kind="stable")
        cum = np.cumsum(energy[order])
        total = cum[-1]
        k = int(np.searchsorted(cum, total - limit**2) + 1)
        chosen = sorted(int(i) for i in order[:k])
        name = ctx.axes.get(a, ctx.axes.get(a - e.ndim, f"index along axis {a}"))
        mask = np.zeros(e.shape, bool)
        idx = [slice(None)] * e.ndim
        idx[a] = chosen
        mask[tuple(idx)] = True
        if k <= max(1, int(_SET_FRACTION * n)):
            sets.append((f"at {name} {_listed(chosen, n)}", {"axis": a, "indices": chosen}, mask))
        elif n - k <= max(1, int(_SET_FRACTION * n)) and n - k >= 1 and name == "time step":
            clean = sorted(set(range(n)) - set(chosen))  # the complement: manual agrees only there
            sets.append((f"at every {name} but {_listed(clean, n)}: manual agrees only there (the gradient carried "
                         "through time, BPTT, is missing or wrong?)", {"axis": a, "indices": chosen, "agrees": clean},
                         mask))
    best = None
    for what, params, mask in sets:
        outside = _norm(np.where(mask, 0, e))
        if outside <= limit and mask.sum() < mask.size:
            score = mask.sum() / mask.size
            if best is None or score < best[0]:
                best = (score, (LOCALISED, f"the error sits only {what}; elsewhere manual agrees", params,
                                outside / fit.scale))
    return None if best is None else best[1]


_FITS = (_zero, _scale, _rearranged, _paths, _terms, _localised)  # simplest first: the first that holds is reported


def diagnose(manual, ref, allowed: float, context: Context | None = None) -> Diagnosis:
    """The best-supported explanation of ``manual`` vs ``ref`` whose residual is within ``allowed`` (see module docstring).

    Args:
      manual, ref: the two values of a failing row (same shape).
      allowed: the row's own tolerance, normwise relative (``verdict.allowance``).
      context: what the explanation may name (``Context``).
    """
    ctx = context or Context()
    m, r = np.asarray(manual, np.float64), np.asarray(ref, np.float64)
    worst = worst_entries(m, r)
    if m.shape != r.shape or not m.size:
        return Diagnosis(NONE, "no simple pattern", worst=worst)
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        bad = np.argwhere(~np.isfinite(m)) if not np.all(np.isfinite(m)) else np.argwhere(~np.isfinite(r))
        where = "manual" if not np.all(np.isfinite(m)) else "reference"
        return Diagnosis(NONE, f"non-finite values in {where} at {len(bad)} entries, first {_index(tuple(bad[0]))}",
                         {"count": len(bad)}, worst=worst)
    fit = _Fit(m, r, max(allowed, 0.0))
    if fit.error <= fit.allowed:
        return Diagnosis(NONE, "no simple pattern (within the normwise tolerance: an elementwise difference)",
                         residual=fit.error, allowed=fit.allowed, worst=worst)
    for candidate in _FITS:
        found = candidate(fit, ctx)
        if found is not None:
            kind, text, params, res = found
            return Diagnosis(kind, text, params, res, fit.allowed, worst)
    return Diagnosis(NONE, f"no simple pattern (relative error {fit.error:.3g}; no scale, rearrangement, other "
                           "quantity or localised set explains it within the tolerance)",
                     residual=fit.error, allowed=fit.allowed, worst=worst)


def _axes_of(shape, is_param: bool):
    """How the localised sets name the axes of a value (``Context.axes``, ``Context.spatial``)."""
    nd = len(shape)
    if is_param:
        names = {2: {0: "input row", 1: "output column"}, 4: {0: "kernel row", 1: "kernel column", 2: "input channel",
                                                             3: "output channel"}}.get(nd, {0: "row"})
        return names, ()
    if nd == 4:
        return {0: "example", 1: "image row", 2: "image column", 3: "channel"}, (1, 2)
    if nd == 3:
        return {0: "example", 1: "time step", 2: "feature"}, ()
    return {0: "example", 1: "feature"}, ()


def layer_sizes(layer, shape, batch: int | None, devices: int = 1) -> dict:
    """{description: size} a scale may be named by: the batch, the value's own axes, the layer's hyperparameters."""
    sizes = {}
    if batch:
        sizes["the batch size N"] = batch
    if len(shape) == 3:
        sizes["the sequence length T"] = shape[1]
        if batch:
            sizes["N x T, the rows of the batch"] = batch * shape[1]
    if len(shape) == 4:
        sizes["H x W, the positions of an image"] = shape[1] * shape[2]
        if batch:
            sizes["N x H x W, every position of the batch"] = batch * shape[1] * shape[2]
    name = getattr(layer, "name", type(layer).__name__)
    fields = getattr(layer, "__dataclass_fields__", {})
    for f in fields:
        v = getattr(layer, f, None)
        if isinstance(v, bool) or not isinstance(v, (int, float, tuple)):
            continue
        if isinstance(v, tuple) and all(isinstance(u, int) and not isinstance(u, bool) for u in v) and v:
            sizes[f"the {f} {v} of {name} (its size)"] = math.prod(v)
        elif f == "window" and isinstance(v, int) and v > 1:
            sizes[f"the {v}x{v} window of {name} (its size)"] = v * v
        elif isinstance(v, int) and v > 1:
            sizes[f"{name}'s {f}"] = v
        elif isinstance(v, float) and 0 < v < 1 and "rate" in f:
            sizes[f"1 - {name}'s {f} {v:g}"] = 1 - v
    heads = getattr(layer, "num_heads", None)
    if isinstance(heads, int) and heads > 0 and shape and shape[-1] % heads == 0:
        sizes[f"the head dimension {shape[-1] // heads} of {name}"] = shape[-1] // heads
    if devices > 1:
        sizes["the device count"] = devices
    return sizes


def context_for(layer, shape, *, batch=None, is_param=False, others=None, terms=None, devices: int = 1,
                output_shape=None) -> Context:
    """The ``Context`` of one row of ``layer`` whose value has ``shape`` (a parameter's scale may also be named by the
    positions of the layer's output, ``output_shape``: a shared weight's gradient sums over them)."""
    axes, spatial = _axes_of(tuple(shape), is_param)
    sizes = layer_sizes(layer, tuple(shape), batch, devices)
    if output_shape is not None:
        sizes = {**layer_sizes(layer, tuple(output_shape), batch, devices), **sizes}
    return Context(sizes, dict(others or {}), dict(terms or {}), axes, spatial)


def diagnoser(judged: list, values_of, context_of, manual: str = "manual"):
    """``i -> Diagnosis`` for row i of ``judged`` (``Report.set_diagnoser``): a structure row's own note, else the fit
    of ``values_of(i) -> (manual, reference)`` within the row's allowance, named by ``context_of(i) -> Context``.
    ``manual``: how the texts name the side under test (check_vjp: "fn")."""
    from manualbp.verify.tolerances import Rule  # the row's rule: a structure row is explained by its note

    def run(i):
        row = judged[i]
        if row.rule is Rule.STRUCTURE:
            return Diagnosis(STRUCTURE, row.note)
        m, r = values_of(i)
        found = diagnose(m, r, row.allowed or 0.0, context_of(i))
        if manual != "manual":
            found.text = re.sub(r"\bmanual\b", manual, found.text)
        return found

    return run
