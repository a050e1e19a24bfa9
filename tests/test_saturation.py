"""Saturated units: every backward at least as accurate as jax.grad against a high-precision truth.

A backward can be right and still lose the tiny derivative of a saturated
unit to cancellation (tanh' = 1 - y^2 near y = 1, sigmoid(z) - y for a
confident right answer, (tanh(x/2) + 1)/2 for a sigmoid far below 0). Truth
here is the derivative evaluated in numpy's long double (64-bit mantissa) by a
well-conditioned formula; a backward passes when its relative error is at most
twice jax.grad's (FlashAttention's k = 2) plus a few ulps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp
from manualbp import reference as ref

LD = np.longdouble
DTYPES = [jnp.float32, jnp.float64]


def _ld(a):
    return np.asarray(a).astype(LD)


def _dsigmoid(x):
    e = np.exp(-np.abs(x))
    return e / (1 + e) ** 2


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _sech2(x):
    return 4 * _dsigmoid(2 * x)


def _gelu_tanh_prime(x):
    c = np.sqrt(LD(2) / LD(np.pi))
    u = c * (x + LD("0.044715") * x**3)
    return _sigmoid(2 * u) + x / 2 * _sech2(u) * c * (1 + 3 * LD("0.044715") * x**2)  # (1 + tanh u)/2 = sigmoid(2u)


def _gelu_erf_prime(x):
    phi = np.exp(-x * x / 2) / np.sqrt(2 * LD(np.pi))
    cdf = _ld([math.erfc(-float(v) / math.sqrt(2)) / 2 for v in x])  # erfc: no cancellation for x << 0
    return cdf + x * phi


# layer, exact f', |x| range per dtype (where f' is a normal number of the dtype)
ACTIVATIONS = {
    "Tanh": (mbp.Tanh(), _sech2, {"float32": (0.5, 12), "float64": (0.5, 30)}),
    "Sigmoid": (mbp.Sigmoid(), _dsigmoid, {"float32": (0.5, 60), "float64": (0.5, 60)}),
    "Softplus": (mbp.Softplus(), _sigmoid, {"float32": (0.5, 60), "float64": (0.5, 60)}),
    "GELU-tanh": (mbp.GELU(approximate=True), _gelu_tanh_prime, {"float32": (1.5, 8), "float64": (1.5, 25)}),
    "GELU-erf": (mbp.GELU(approximate=False), _gelu_erf_prime, {"float32": (1.5, 12), "float64": (1.5, 30)}),
}


def _grid(dtype, lo, hi, n=1024):
    half = np.linspace(lo, hi, n // 2)
    return jnp.asarray(np.concatenate([-half[::-1], half]), dtype)


def _rel(value, truth):
    return np.abs(_ld(value) - truth) / np.abs(truth)


def _assert_no_worse(manual_err, jax_err, dtype, what):
    eps = float(jnp.finfo(dtype).eps)
    for stat in (np.median, np.max):
        m, j = float(stat(manual_err)), float(stat(jax_err))
        assert m <= 2 * j + 4 * eps, f"{what}: {stat.__name__} relative error {m:.2e}, jax.grad's {j:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_derivative_at_extreme_inputs(name, dtype):
    layer, prime, ranges = ACTIVATIONS[name]
    x = _grid(dtype, *ranges[jnp.dtype(dtype).name])
    y, cache = layer.forward({}, x)
    _, dx = layer.backward({}, cache, jnp.ones_like(x))
    dx_jax = jax.vmap(jax.grad(lambda v: ref.forward(layer, {}, v, ref.NoTaps())))(x)
    truth = prime(_ld(x))
    _assert_no_worse(_rel(dx, truth), _rel(dx_jax, truth), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_tanh_backward_keeps_the_precision_of_its_cache(dtype):
    """Given the cached y, (1 - y)(1 + y) is within a few ulps of its exact value; 1 - y^2 keeps only y^2's rounding."""
    x = _grid(dtype, 0.5, 12 if dtype == jnp.float32 else 19)
    y, cache = mbp.Tanh().forward({}, x)
    _, dx = mbp.Tanh().backward({}, cache, jnp.ones_like(x))
    yl = _ld(y)
    exact = (1 - yl) * (1 + yl)
    keep = exact > 0  # y rounded to 1: nothing left to keep
    jax_dx = jax.vmap(jax.grad(jnp.tanh))(x)  # jax's rule works from the same y
    _assert_no_worse(_rel(dx[keep], exact[keep]), _rel(jax_dx[keep], exact[keep]), dtype, "tanh' from the cached y")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_gelu_tanh_backward_keeps_the_precision_of_its_cache(dtype):
    x = _grid(dtype, 1.5, 8 if dtype == jnp.float32 else 25)
    layer = mbp.GELU(approximate=True)
    _, (xc, t) = layer.forward({}, x)
    _, dx = layer.backward({}, (xc, t), jnp.ones_like(x))
    xl, tl = _ld(xc), _ld(t)
    c = np.sqrt(LD(2) / LD(np.pi))
    exact = (1 + tl) / 2 + xl / 2 * (1 - tl) * (1 + tl) * c * (1 + 3 * LD("0.044715") * xl**2)
    keep = exact != 0
    eps = float(jnp.finfo(dtype).eps)
    assert float(np.max(_rel(dx[keep], exact[keep]))) <= 16 * eps


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_sigmoid_bce_gradient_of_confident_answers(dtype):
    """dL/dz = (s(z) - y)/n for y in {0, 1} and |z| up to 30: a confident right answer keeps its tiny gradient."""
    head = mbp.SigmoidBinaryCrossEntropy()
    z = _grid(dtype, 0.5, 30, n=2048)[:, None]  # n = 2048 examples: w = 1/n is exact
    for label in (0.0, 1.0):
        y = jnp.full(z.shape, label, dtype)
        _, cache = head.forward(z, y)
        dz = head.backward(cache)
        dz_jax = jax.grad(lambda v, y=y: ref.head_forward(head, v, y))(z)
        truth = (_sigmoid(_ld(z)) if label == 0 else -_sigmoid(-_ld(z))) / z.shape[0]
        _assert_no_worse(_rel(dz, truth), _rel(dz_jax, truth), dtype, f"BCE dz, y = {label}")


def _relative_errors(layer, seed, dtype=jnp.float32, scale=10.0):
    """Entrywise relative errors of dx and every dparam, manual and jax.grad, vs float64 at the same rounded point."""
    # the point drawn and rounded on the host; jax.grad compiled (one program per precision, not one per operation)
    rng = np.random.default_rng(seed)
    params = jax.eval_shape(lambda: layer.init(jax.random.key(0), (6, 4), jnp.float64)[0])
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape) / math.sqrt(s.shape[0]), params)
    x = scale * rng.standard_normal((8, 6, 4))
    lo = jax.tree_util.tree_map(lambda a: host(a, dtype), (params, x))
    hi = jax.tree_util.tree_map(lambda a: host(a, jnp.float64), lo)
    fn = lambda p, v: ref.forward(layer, p, v, ref.NoTaps())  # noqa: E731
    dy = host(rng.standard_normal(jax.eval_shape(fn, *hi).shape), dtype)
    vjp = jax.jit(lambda p, v, dy: ref.vjp_layer(fn, p, v, dy))
    _, truth_p, truth_x = vjp(*hi, host(dy, jnp.float64))
    _, jax_p, jax_x = vjp(*lo, dy)

    def manual(p, v):
        _, cache = layer.forward(p, v)
        return layer.backward(p, cache, dy)

    man_p, man_x = jax.jit(manual)(*lo)

    def errs(p, dx):
        parts = [np.asarray(dx, np.float64) - np.asarray(truth_x)] + [
            np.asarray(p[k], np.float64) - np.asarray(truth_p[k]) for k in sorted(truth_p)]
        scale_ = [np.asarray(truth_x)] + [np.asarray(truth_p[k]) for k in sorted(truth_p)]
        return np.concatenate([np.abs(d).ravel() / np.maximum(np.abs(t).ravel(), 1e-300) for d, t in zip(parts, scale_)])

    return errs(man_p, man_x), errs(jax_p, jax_x)


@pytest.mark.parametrize("layer", [mbp.LSTM(8), mbp.GRU(8), mbp.RNN(8)], ids=["LSTM", "GRU", "RNN"])
def test_recurrent_float32_at_input_scale_10_is_as_accurate_as_jax_grad(layer):
    """Saturated gates (|z| up to ~30): the manual gradients' entrywise errors are distributed like jax.grad's.

    With sigmoid gates computed as (tanh(z/2) + 1)/2 (absolute, not relative, precision for z << 0) the
    LSTM's median entrywise error was 1.3-1.4x jax.grad's and its 90th percentile 1.4-1.6x.
    """
    with jax.default_matmul_precision("highest"):  # float32 products in float32 (a GPU's TF32 is not what is measured)
        pairs = [_relative_errors(layer, seed) for seed in range(3)]
    manual = np.concatenate([m for m, _ in pairs])
    jaxs = np.concatenate([j for _, j in pairs])
    for q in (0.5, 0.9):
        m, j = np.quantile(manual, q), np.quantile(jaxs, q)
        assert m <= 1.2 * j, f"quantile {q}: manual {m:.2e} vs jax.grad {j:.2e}"
