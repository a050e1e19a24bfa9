"""How accurate each layer's backward is, beside jax.grad's: the machinery of the accuracy matrix.

For a layer (or head) at a point (params, x, dy) drawn at an input scale, in float32 or float64: the manual
backward (jitted ``forward`` then ``backward``) and jax.grad (``jax.vjp`` of the reference forward, jitted)
are both measured against a truth: the reference's VJP evaluated in 50-digit arithmetic at the same point
(``highprec.truth``), the exact value of what both compute, however much a formula cancels. For float32
points too: the float64 reference is not a truth where a formula cancels. Softmax over logits (61.2, -76.7,
12.5, -17.0, -13.6) has y_0 = 1 - 7e-22, which float64 rounds to 1, and its dx_0 = +3.6e-22 becomes
exactly 0 there (dy_0 - D with D rounded to dy_0), as in float32's jax.grad: measured against float64, a
float32 backward that gets 3.6e-22 right would be reported 100% wrong and jax.grad's 0 exact.

Each quantity (dx and every parameter gradient) gets a normwise relative error ||v - truth|| / ||truth||
for both, and the ratio (manual's error) / (jax.grad's error), each error floored at the dtype's epsilon:
no computation in the dtype can be closer than rounding its own result, so an error below eps is counted
as eps, and two errors both at that floor give the ratio 1. A quantity whose truth is exactly zero
(nothing to be relative to) is left out.

Input scales: x = scale * N(0, 1) (scale 1, 5, 30: at 30 sigmoids, tanh and softmax saturate), and for
layers whose forward makes discrete choices (ReLU's kink, max-pool's winner) also "ties": x on a grid of
halves (exact zeros and tied windows); for the normalizations also "flat": x = 0.5 + 1e-3 N(0, 1), a
variance far below epsilon. Parameters are drawn as the mutation scenes draw them (W ~ N(0,
1/fan_in), vectors ~ N(0, 1/4): no unit gamma or zero bias), dy ~ N(0, 1). Heads take logits at the scale
and, per case, random labels or the confident right answer (label = argmax, the saturated case).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from mutants import draw_params

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify import highprec
from manualbp.verify.rounding import cast

SCALES = (1.0, 5.0, 30.0)
TIES = "ties"
FLAT = "flat"  # x = 0.5 + 1e-3 N(0, 1): a normalization's variance far below its epsilon
B = 2  # examples per point: small, for the 50-digit truth


class Case(NamedTuple):
    name: str
    layer: object
    input_shape: object  # per-example shape; a tuple of shapes for a tuple input; "ids" for integer ids
    kinks: bool = False  # the forward makes discrete choices: also measured at TIES
    flat: bool = False  # a normalization: also measured at FLAT
    labels: str | None = None  # heads: "random" or "argmax" (the confident right answer)


def _mask_shape(S):
    return ("mask", S)


CASES = [
    Case("Dense", mbp.Dense(3), (4,)),
    Case("Identity", mbp.Identity(), (4,)),
    Case("Sigmoid", mbp.Sigmoid(), (6,)),
    Case("Tanh", mbp.Tanh(), (6,)),
    Case("Softplus", mbp.Softplus(), (6,)),
    Case("GELU (tanh)", mbp.GELU(), (6,)),
    Case("GELU (erf)", mbp.GELU(approximate=False), (6,)),
    Case("ReLU", mbp.ReLU(), (6,), kinks=True),
    Case("LeakyReLU", mbp.LeakyReLU(0.1), (6,), kinks=True),
    Case("Softmax", mbp.Softmax(), (5,)),
    Case("Softmax (axis 1 of 3)", mbp.Softmax(axis=1), (5, 2)),
    Case("LayerNorm", mbp.LayerNorm(), (5,), flat=True),
    Case("BatchNorm (batch 2)", mbp.BatchNorm(), (3,), flat=True),
    Case("BatchNorm (batch 2 x 3 x 3)", mbp.BatchNorm(), (3, 3, 2), flat=True),
    Case("Conv1D", mbp.Conv1D(3, 3), (5, 2)),
    Case("Conv2D", mbp.Conv2D(2, 3, stride=2), (4, 4, 2)),
    Case("ConvTranspose2D", mbp.ConvTranspose2D(2, 3, stride=2), (3, 3, 2)),
    Case("MaxPool2D", mbp.MaxPool2D(2), (4, 4, 2), kinks=True),
    Case("AvgPool2D", mbp.AvgPool2D(2), (4, 4, 2)),
    Case("GlobalAvgPool2D", mbp.GlobalAvgPool2D(), (3, 3, 2)),
    Case("GlobalMaxPool2D", mbp.GlobalMaxPool2D(), (3, 3, 2), kinks=True),
    Case("Flatten", mbp.Flatten(), (2, 3)),
    Case("Dropout", mbp.Dropout(0.3, key=jax.random.key(7)), (6,)),
    Case("Embedding", mbp.Embedding(7, 3), "ids"),
    Case("PositionalEmbedding", mbp.PositionalEmbedding(6, 3), (4, 3)),
    Case("Add", mbp.Add(), ((4,), (4,))),
    Case("Multiply", mbp.Multiply(), ((4,), (4,))),
    Case("Residual(Dense)", mbp.Residual(mbp.Dense(4)), (4,)),
    Case("RNN", mbp.RNN(3), (4, 2)),
    Case("LSTM", mbp.LSTM(3), (4, 2)),
    Case("GRU", mbp.GRU(3), (4, 2)),
    Case("Bidirectional(GRU)", mbp.Bidirectional(mbp.GRU(3)), (4, 2)),
    Case("MultiHeadAttention", mbp.MultiHeadAttention(2), (4, 4)),
    Case("MultiHeadAttention (causal)", mbp.MultiHeadAttention(2, causal=True), (4, 4)),
    Case("MultiHeadAttention (causal, head_dim 4)", mbp.MultiHeadAttention(2, causal=True), (4, 8)),
    Case("MultiHeadAttention (causal, head_dim 4, batched)", mbp.MultiHeadAttention(2, causal=True, kernel="batched"),
         (4, 8)),
    Case("MultiHeadAttention (causal, head_dim 4, pallas)", mbp.MultiHeadAttention(2, causal=True, kernel="pallas"),
         (4, 8)),
    Case("MultiHeadAttention (cross, key mask)", mbp.MultiHeadAttention(2, cross=True, key_mask=True),
         ((3, 4), (5, 2), _mask_shape(5))),
    Case("TransformerBlock (1 head, head_dim 4)", mbp.TransformerBlock(4, 1, hidden=6), (3, 4)),
    Case("SoftmaxCrossEntropy (random labels)", mbp.SoftmaxCrossEntropy(), (5,), labels="random"),
    Case("SoftmaxCrossEntropy (label = argmax)", mbp.SoftmaxCrossEntropy(), (5,), labels="argmax"),
    Case("SigmoidBinaryCrossEntropy (random labels)", mbp.SigmoidBinaryCrossEntropy(), (5,), labels="random"),
    Case("SigmoidBinaryCrossEntropy (label = z > 0)", mbp.SigmoidBinaryCrossEntropy(), (5,), labels="argmax"),
    Case("MeanSquaredError", mbp.MeanSquaredError(), (5,), labels="random"),
]


def _is_head(case):
    return case.labels is not None


def _init_shape(shape):
    if shape == "ids":
        return (4,)
    if isinstance(shape[0], tuple):
        return tuple(s if s[0] != "mask" else (s[1],) for s in shape)
    return shape


def _draw_x(shape, scale, rng, dtype):
    def one(s):
        if s[0] == "mask":  # a key mask (B, S): every row keeps at least its first key
            lengths = rng.integers(1, s[1] + 1, (B,))
            return np.arange(s[1])[None, :] < lengths[:, None]
        z = rng.standard_normal((B, *s))
        x = np.round(2 * z) / 2 if scale == TIES else 0.5 + 1e-3 * z if scale == FLAT else scale * z
        return x.astype(dtype)

    if shape == "ids":
        return rng.integers(0, 7, (B, 4)).astype(np.int32)
    return tuple(one(s) for s in shape) if isinstance(shape[0], tuple) else one(shape)


def point(case: Case, dtype, scale, seed: int):
    """(params, x, dy) of a layer, or ({}, logits, labels) of a head: numpy arrays in ``dtype``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    x = _draw_x(case.input_shape, scale, rng, dtype)
    if _is_head(case):
        if isinstance(case.layer, mbp.SoftmaxCrossEntropy):
            labels = np.argmax(x, -1).astype(np.int32) if case.labels == "argmax" else rng.integers(0, 5, (B,)).astype(np.int32)
        elif isinstance(case.layer, mbp.SigmoidBinaryCrossEntropy):
            labels = (x > 0).astype(dtype) if case.labels == "argmax" else rng.integers(0, 2, x.shape).astype(dtype)
        else:
            labels = rng.standard_normal(x.shape).astype(dtype)
        return {}, x, labels
    with jax.enable_x64(True):
        params = draw_params(case.layer, _init_shape(case.input_shape), dtype, rng)
        y = jax.eval_shape(lambda p, v: ref.forward(case.layer, p, v, ref.NoTaps()), params, x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return jax.tree_util.tree_map(np.asarray, params), x, dy


def _reference_vjp(case):
    if _is_head(case):
        return lambda p, z, labels: (ref.head_forward(case.layer, z, labels),
                                     {"dlogits": jax.grad(lambda v: ref.head_forward(case.layer, v, labels))(z)})
    fn = lambda p, v: ref.forward(case.layer, p, v, ref.NoTaps())  # noqa: E731

    def vjp(p, v, dy):
        y, dparams, dx = ref.vjp_layer(fn, p, v, dy)
        return y, _quantities(dparams, dx)

    return vjp


def _manual(case):
    layer = case.layer
    if _is_head(case):
        def run(p, z, labels):
            value, cache = layer.forward(z, labels)
            return value, {"dlogits": layer.backward(cache)}
    else:
        def run(p, v, dy):
            y, cache = layer.forward(p, v)
            dparams, dx = layer.backward(p, cache, dy)
            return y, _quantities(dparams, dx)
    return run


def _quantities(dparams, dx) -> dict:
    out = {}
    for path, v in jax.tree_util.tree_leaves_with_path(dx):
        if v is not None and jnp.issubdtype(v.dtype, jnp.floating):
            out["dx" + jax.tree_util.keystr(path)] = v
    for path, v in jax.tree_util.tree_leaves_with_path(dparams):  # "dW", "dattn/Wq", "dforward/bhn"
        out["d" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = v
    return out


_JITS = {}


def _jitted(kind, case, dtype):
    key = (kind, case.name, np.dtype(dtype).name)
    if key not in _JITS:
        _JITS[key] = jax.jit(_manual(case) if kind == "manual" else _reference_vjp(case))
    return _JITS[key]


class Errors(NamedTuple):
    quantity: str
    manual: float  # normwise relative error against the truth
    jax: float
    ratio: float  # max(manual, eps) / max(jax, eps)


def rel_error(v, truth) -> float:
    t = np.asarray(truth, np.float64)
    return float(np.linalg.norm(np.asarray(v, np.float64) - t) / np.linalg.norm(t))


def errors(case: Case, dtype, scale, seed: int) -> list[Errors]:
    """Every gradient's error, manual and jax.grad, against the truth (module docstring), at one point."""
    dtype = np.dtype(dtype)
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        p, x, third = point(case, dtype, scale, seed)
        args = cast((p, x, third), dtype)
        _, man = _jitted("manual", case, dtype)(*args)
        _, jg = _jitted("reference", case, dtype)(*args)
        _, truth = highprec.truth(_reference_vjp(case), p, x, third)
    eps = float(np.finfo(dtype).eps)
    out = []
    for k in sorted(truth):
        t = np.asarray(truth[k], np.float64)
        if not np.any(t) or k not in man:
            continue
        em, ej = rel_error(man[k], t), rel_error(jg[k], t)
        out.append(Errors(k, em, ej, max(em, eps) / max(ej, eps)))
    return out


def softmax_vjp_exact(x, dy, dps=600):
    """dx = y (dy - sum dy y), y = softmax(x), in ``dps``-digit arithmetic: the closed form, one slice."""
    with mpmath.workdps(dps):
        xs = [mpmath.mpf(float(v)) for v in x]
        e = [mpmath.exp(v - max(xs)) for v in xs]
        y = [v / sum(e) for v in e]
        d = sum(mpmath.mpf(float(a)) * b for a, b in zip(dy, y))
        return np.array([float(b * (mpmath.mpf(float(a)) - d)) for a, b in zip(dy, y)])


def scales_of(case: Case):
    return (*SCALES, *([TIES] if case.kinks else []), *([FLAT] if case.flat else []))


def quantiles(ratios) -> dict:
    r = np.asarray(ratios, np.float64)
    return {"p50": float(np.quantile(r, 0.5)), "p90": float(np.quantile(r, 0.9)), "p99": float(np.quantile(r, 0.99)),
            "max": float(r.max())}


__all__ = ["CASES", "Case", "Errors", "SCALES", "TIES", "errors", "point", "quantiles", "rel_error", "scales_of",
           "softmax_vjp_exact"]
