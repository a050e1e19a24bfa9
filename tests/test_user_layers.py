"""A user's own layers: plain classes (no mbp.Layer) in compare and gradcheck, register_reference, containers,
and init's refusal of float64 when jax's 64-bit mode is off."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import pytest
from arrays import RUN_IDS, RUNS

import manualbp as mbp
from manualbp import reference as ref

HEAD = mbp.SoftmaxCrossEntropy()


@dataclass(frozen=True)
class Scale:
    """y = s * x per feature; a plain class following the protocol, not a subclass of mbp.Layer."""

    wrong: bool = False

    def init(self, key, input_shape, dtype=jnp.float32):
        del key
        return {"s": jnp.linspace(0.5, 1.5, input_shape[-1], dtype=dtype)}, tuple(input_shape)

    def forward(self, params, x):
        return params["s"][None] * x, x

    def backward(self, params, x, dy):
        ds = jnp.sum(dy * x, axis=0)
        return {"s": ds}, (dy if self.wrong else dy * params["s"][None])  # the wrong one forgets the factor s


mbp.register_reference(Scale, lambda layer, params, x: x * params["s"][None])


@dataclass(frozen=True)
class Skip:
    """y = x + block(x): a user's own container (children, split_params, replace_children), not an mbp.Layer."""

    block: object

    @property
    def children(self):
        return (("block", self.block),)

    def split_params(self, params):
        return (params,)

    def replace_children(self, layers):
        return Skip(*layers)

    def init(self, key, input_shape, dtype=jnp.float32):
        return self.block.init(key, input_shape, dtype)

    def forward(self, params, x):
        fx, cache = self.block.forward(params, x)
        return x + fx, cache

    def backward(self, params, cache, dy):
        dparams, dx = self.block.backward(params, cache, dy)
        return dparams, dy + dx


@mbp.register_reference(Skip)
def _skip_reference(layer, params, x, taps):  # a container: its children through ref.apply, each with its own taps
    return x + ref.apply(layer.block, params, x, taps.child("block"))


def _batch(dtype=jnp.float64):
    x = jax.random.normal(jax.random.key(1), (5, 4), dtype)
    return x, jnp.array([0, 1, 2, 0, 1])


@pytest.mark.parametrize("dtype, jit", RUNS, ids=RUN_IDS)
def test_plain_class_layer_and_container_in_compare(dtype, jit):
    model = mbp.Sequential(mbp.Dense(4), Skip(mbp.Sequential(Scale(), mbp.Tanh())), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), dtype)
    x, y = _batch(dtype)
    report = mbp.compare(model, HEAD, params, x, y, jit=jit)
    assert report.ok, str(report)
    for quantity in ("forward y", "dL/dy", "dL/dx", "ds"):
        report.row("1/block/0 Scale", quantity)  # named by its path inside the user's container


def test_plain_class_layer_against_finite_differences():
    model = mbp.Sequential(mbp.Dense(4), Skip(Scale()), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    report = mbp.gradcheck(model, HEAD, params, *_batch())
    assert report.ok, str(report)


def test_wrong_backward_of_a_plain_class_is_named():
    model = mbp.Sequential(mbp.Dense(4), Scale(wrong=True), mbp.Dense(3))
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    report = mbp.compare(model, HEAD, params, *_batch())
    assert (report.first_failure.layer, report.first_failure.quantity) == ("1 Scale", "dL/dx")
    assert report.row("1 Scale", "ds").ok and report.row("1 Scale", "dL/dy").ok


def test_annotated_register_and_four_argument_form():
    @dataclass(frozen=True)
    class Square:
        def forward(self, params, x):
            return x * x, x

        def backward(self, params, x, dy):
            return {}, 2 * x * dy

    @ref.forward.register
    def _(layer: Square, params, x, taps):  # the annotation is what singledispatch dispatches on
        return jnp.square(x)

    x = jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    assert mbp.check_layer(Square(), {}, x).ok

    seen = []

    @dataclass(frozen=True)
    class Cube(Square):
        def forward(self, params, x):
            return x**3, x

        def backward(self, params, x, dy):
            return {}, 3 * x**2 * dy

    def cube(layer, params, x, taps):
        seen.append(type(taps).__name__)
        return jnp.power(x, 3)

    assert mbp.register_reference(Cube, cube) is cube
    model = mbp.Sequential(mbp.Dense(2), Cube())
    params = (mbp.Dense(2).init(jax.random.key(0), (2,), jnp.float64)[0], {})  # Cube has no init: its params by hand
    assert mbp.compare(model, mbp.MeanSquaredError(), params, x, jnp.zeros((3, 2))).ok
    assert "Taps" in seen  # the four-argument form receives the comparison's taps


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((Scale(), lambda layer, params, x: x), TypeError,
         r"register_reference: expected a layer class as the first argument \(e.g. Scale\), got an instance Scale"),
        ((Scale, lambda params, x: x), TypeError,
         r"register_reference: fn must take \(layer, params, x\) or \(layer, params, x, taps\) .*got <lambda>\(params, x\)"),
        ((Scale, lambda layer, params, x, taps, extra: x), TypeError, r"fn must take .*got <lambda>\(layer, params, x, taps, extra\)"),
        ((Scale, "x * s"), TypeError, r"register_reference: fn must be a function \(layer, params, x\) -> y, got 'x \* s'"),
        ((mbp.Dense, lambda layer, params, x: x), ValueError,
         r"register_reference: Dense is one of manualbp's layers and keeps its own reference twin; subclass it"),
    ],
    ids=["instance", "too-few-arguments", "too-many-arguments", "not-callable", "builtin-type"],
)
def test_register_reference_errors(args, error, match):
    with pytest.raises(error, match=match):
        mbp.register_reference(*args)


def test_unregistered_layer_says_how_to_register():
    @dataclass(frozen=True)
    class Unknown(Scale):
        pass

    model = mbp.Sequential(mbp.Dense(4), Unknown(), mbp.Dense(3))  # dispatch finds Scale's reference: a subclass
    params, _ = model.init(jax.random.key(0), (4,), jnp.float64)
    assert mbp.compare(model, HEAD, params, *_batch()).ok

    @dataclass(frozen=True)
    class Lone:
        def forward(self, params, x):
            return x, None

        def backward(self, params, cache, dy):
            return {}, dy

    with pytest.raises(NotImplementedError, match=r"no reference forward for Lone; register one with "
                                                  r"mbp.register_reference\(Lone, fn\)"):
        mbp.check_layer(Lone(), {}, jnp.ones((2, 2)))


# ---- float64 without 64-bit mode ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bias(mbp.Layer):
    """A user's subclass of mbp.Layer with its own init: guarded like the built-in layers."""

    def init(self, key, input_shape, dtype=jnp.float32):
        return {"b": jnp.zeros(input_shape[-1:], dtype)}, tuple(input_shape)


@pytest.mark.parametrize(
    "layer, shape",
    [(mbp.Dense(3), (4,)), (mbp.ReLU(), (4,)), (mbp.Sequential(mbp.Dense(3), mbp.Tanh()), (4,)),
     (mbp.LSTM(3), (2, 4)), (mbp.Conv2D(2, 3), (5, 5, 1)), (Bias(), (4,))],
    ids=lambda v: getattr(v, "name", None) or str(v),
)
def test_float64_without_x64_is_refused(layer, shape):
    name = layer.name
    with jax.enable_x64(False):
        with pytest.raises(TypeError, match=rf"{name}.init: dtype float64 needs jax's 64-bit mode, which is off "
                                            r"\(jax would make float32 arrays instead\); call "
                                            r"jax.config.update\(\"jax_enable_x64\", True\)"):
            layer.init(jax.random.key(0), shape, jnp.float64)
        with pytest.raises(TypeError, match="needs jax's 64-bit mode"):
            layer.init(jax.random.key(0), shape, dtype="float64")  # by keyword, as a string
        params, _ = layer.init(jax.random.key(0), shape)  # the default float32 is untouched
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    params, _ = layer.init(jax.random.key(0), shape, jnp.float64)  # with 64-bit mode on (conftest), float64
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(params))
