"""as_function: every built-in layer as a JAX-differentiable function whose VJP is its manual backward."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from arrays import host
from jax.test_util import check_grads

import manualbp as mbp
from manualbp import reference as ref
from manualbp.verify.verdict import judge


def _normal(shape, dtype, seed=1):
    return host(np.random.default_rng(seed).standard_normal(shape), dtype)


def _seq(layer, dtype):
    return layer, _normal((2, 3, 2), dtype)


ONE_DEVICE = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))  # tensor-parallel layers

# one or more configurations per layer type: dtype -> (layer, x). A layer type registered with the reference
# (every built-in, and every layer added later) must appear here: test_every_layer_type_has_an_example says so.
EXAMPLES = {
    mbp.Identity: [lambda dt: (mbp.Identity(), _normal((3, 4), dt))],
    mbp.Sigmoid: [lambda dt: (mbp.Sigmoid(), _normal((3, 4), dt))],
    mbp.Tanh: [lambda dt: (mbp.Tanh(), _normal((3, 4), dt))],
    mbp.ReLU: [lambda dt: (mbp.ReLU(), _normal((3, 4), dt))],
    mbp.LeakyReLU: [lambda dt: (mbp.LeakyReLU(0.1), _normal((3, 4), dt))],
    mbp.Softplus: [lambda dt: (mbp.Softplus(), _normal((3, 4), dt))],
    mbp.GELU: [lambda dt: (mbp.GELU(approximate=True), _normal((3, 4), dt)),
               lambda dt: (mbp.GELU(approximate=False), _normal((3, 4), dt))],
    mbp.Elementwise: [lambda dt: (mbp.Elementwise(jnp.sin, jnp.cos, label="sin"), _normal((3, 4), dt))],
    mbp.Dense: [lambda dt: (mbp.Dense(3), _normal((4, 5), dt)),
                lambda dt: (mbp.Dense(2, use_bias=False), _normal((2, 3, 4), dt))],
    mbp.Conv2D: [lambda dt: (mbp.Conv2D(3, 3, padding="SAME"), _normal((2, 5, 5, 2), dt)),
                 lambda dt: (mbp.Conv2D(2, 2, stride=2, padding="VALID"), _normal((1, 5, 5, 3), dt))],
    mbp.MaxPool2D: [lambda dt: (mbp.MaxPool2D(2), _normal((2, 4, 4, 2), dt))],
    mbp.AvgPool2D: [lambda dt: (mbp.AvgPool2D(2, stride=1, padding="SAME"), _normal((2, 3, 3, 2), dt))],
    mbp.Flatten: [lambda dt: (mbp.Flatten(), _normal((2, 3, 2), dt))],
    mbp.Embedding: [lambda dt: (mbp.Embedding(7, 3), jax.random.randint(jax.random.key(1), (2, 4), 0, 7))],
    mbp.RNN: [lambda dt: _seq(mbp.RNN(4), dt),
              lambda dt: (mbp.RNN(3, return_sequences=False, initial_state="given"),
                          (_normal((2, 3, 2), dt), _normal((2, 3), dt, seed=2)))],
    mbp.LSTM: [lambda dt: _seq(mbp.LSTM(3), dt),
               lambda dt: (mbp.LSTM(2, return_sequences=False, initial_state="given"),
                           (_normal((2, 3, 2), dt), _normal((2, 2), dt, seed=2), _normal((2, 2), dt, seed=3)))],
    mbp.Add: [lambda dt: (mbp.Add(), (_normal((3, 4), dt), _normal((3, 4), dt, seed=2)))],
    mbp.Multiply: [lambda dt: (mbp.Multiply(), (_normal((3, 4), dt), _normal((3, 4), dt, seed=2)))],
    mbp.LayerNorm: [lambda dt: (mbp.LayerNorm(), _normal((3, 4), dt))],
    mbp.BatchNorm: [lambda dt: (mbp.BatchNorm(), _normal((4, 3), dt))],
    mbp.Residual: [lambda dt: (mbp.Residual(mbp.Sequential(mbp.Dense(4), mbp.Tanh())), _normal((3, 4), dt))],
    mbp.Sequential: [lambda dt: (mbp.Sequential(mbp.Dense(4), mbp.ReLU(), mbp.Dense(2)), _normal((3, 5), dt))],
    mbp.Parallel: [lambda dt: (mbp.Parallel(mbp.Dense(3), mbp.Tanh()), _normal((2, 3), dt))],
    mbp.GRU: [lambda dt: _seq(mbp.GRU(3), dt),
              lambda dt: (mbp.GRU(2, return_sequences=False, initial_state="given"),
                          (_normal((2, 3, 2), dt), _normal((2, 2), dt, seed=2)))],
    mbp.Bidirectional: [lambda dt: _seq(mbp.Bidirectional(mbp.GRU(2)), dt)],
    mbp.Conv1D: [lambda dt: (mbp.Conv1D(3, 2, padding="CAUSAL"), _normal((2, 5, 2), dt))],
    mbp.ConvTranspose2D: [lambda dt: (mbp.ConvTranspose2D(2, 3, stride=2, padding="SAME"), _normal((2, 3, 3, 2), dt))],
    mbp.GlobalAvgPool2D: [lambda dt: (mbp.GlobalAvgPool2D(), _normal((2, 3, 3, 2), dt))],
    mbp.GlobalMaxPool2D: [lambda dt: (mbp.GlobalMaxPool2D(), _normal((2, 3, 3, 2), dt))],
    mbp.Softmax: [lambda dt: (mbp.Softmax(-1), _normal((3, 4), dt))],
    mbp.Dropout: [lambda dt: (mbp.Dropout(0.25, key=jax.random.key(0)), _normal((3, 4), dt))],
    mbp.PositionalEmbedding: [lambda dt: (mbp.PositionalEmbedding(5, 4), _normal((2, 3, 4), dt))],
    mbp.MultiHeadAttention: [lambda dt: (mbp.MultiHeadAttention(2, causal=True), _normal((2, 3, 4), dt))],
    mbp.TransformerBlock: [lambda dt: (mbp.TransformerBlock(4, 2), _normal((2, 3, 4), dt))],
    mbp.ColumnParallelDense: [lambda dt: (mbp.ColumnParallelDense(4, ONE_DEVICE, gather_output=True),
                                          _normal((2, 3), dt))],
    mbp.RowParallelDense: [lambda dt: (mbp.RowParallelDense(3, ONE_DEVICE), _normal((2, 4), dt))],
    mbp.ParallelAttention: [lambda dt: (mbp.ParallelAttention(2, ONE_DEVICE, causal=True), _normal((2, 3, 4), dt))],
    mbp.FSDPDense: [lambda dt: (mbp.FSDPDense(3, ONE_DEVICE), _normal((2, 4), dt))],
}
CASES = [pytest.param(make, id=f"{t.__name__}-{i}") for t, makes in EXAMPLES.items() for i, make in enumerate(makes)]


def _case(make, dtype):
    layer, x = make(dtype)
    shape = jax.tree_util.tree_map(lambda v: tuple(v.shape[1:]), x)  # shapes exclude the batch
    params, _ = layer.init(jax.random.key(0), shape, dtype)
    return layer, params, x


def _builtin_layer_types():
    """Every layer type of manualbp.layers with a registered reference forward: the built-ins, whoever adds them."""
    return {t for t in ref.forward.registry if t.__module__.startswith("manualbp.layers.")}


def test_every_layer_type_has_an_example():
    missing = sorted(t.__name__ for t in _builtin_layer_types() - set(EXAMPLES))
    assert not missing, f"add an example configuration to tests/test_bridge.py EXAMPLES for: {missing}"


@pytest.mark.parametrize("make", CASES)
def test_vjp_is_the_manual_backward_and_matches_the_reference(make, dtype=jnp.float64):
    layer, params, x = _case(make, dtype)
    report = mbp.check_vjp(mbp.as_function(layer), lambda p, x: ref.apply(layer, p, x), params, x, jit=True)
    assert report.ok, str(report)


# jax's own check_grads on one layer of each kind of interface (an array, a tuple of arrays, integer ids, a given
# state, a container, a fixed dropout key, a block): every layer's VJP is compared with autodiff of its reference
# above, and with finite differences in its own test file; this is that jax's tool accepts what as_function makes
INTERFACES = ["Dense-0", "Add-0", "Embedding-0", "LSTM-1", "Residual-0", "BatchNorm-0", "Dropout-0", "TransformerBlock-0"]


def test_every_interface_example_exists():
    assert set(INTERFACES) <= {case.id for case in CASES}


@pytest.mark.parametrize("make", [case for case in CASES if case.id in INTERFACES])
def test_check_grads_passes(make):
    layer, params, x = _case(make, jnp.float64)
    f = jax.jit(mbp.as_function(layer))
    leaves, treedef = jax.tree_util.tree_flatten(x)
    floating = [jnp.issubdtype(v.dtype, jnp.floating) for v in leaves]

    def g(params, *float_leaves):  # integer inputs (ids) have no derivative: held fixed
        it = iter(float_leaves)
        return f(params, jax.tree_util.tree_unflatten(treedef, [next(it) if fl else v for v, fl in zip(leaves, floating)]))

    # NumPy arguments: check_grads' finite differences (args + eps * tangent) then run on the host, where jax
    # arrays would compile an add and a subtract per shape
    args = jax.tree_util.tree_map(np.asarray, (params, *[v for v, fl in zip(leaves, floating) if fl]))
    check_grads(g, args, order=1, modes=["rev"])


def test_it_is_the_manual_backward_that_runs():
    """A wrong hand-written rule shows through as_function: the VJP is the layer's backward, not autodiff of forward."""

    @dataclass(frozen=True)
    class Cube:  # y = a x^3, with the power rule's 3 forgotten in dx
        def forward(self, params, x):
            return params["a"] * x**3, x

        def backward(self, params, x, dy):
            return {"a": jnp.sum(dy * x**3)}, dy * params["a"] * 2 * x**2

    params, x = {"a": jnp.float64(1.5)}, _normal((3, 2), jnp.float64)
    report = mbp.check_vjp(mbp.as_function(Cube()), lambda p, x: p["a"] * x**3, params, x)
    assert not report.ok
    assert report.first_failure.quantity == "x" and report.row("as_function(Cube)", "params['a']").ok


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_jax_grad_of_an_optax_loss_equals_the_reference(jit):
    if jit:
        model = mbp.Sequential(mbp.Conv2D(3, 3, padding="SAME"), mbp.ReLU(), mbp.MaxPool2D(2), mbp.Flatten(),
                               mbp.Dense(4))
        params, _ = model.init(jax.random.key(0), (4, 4, 1), jnp.float64)
        x = _normal((5, 4, 4, 1), jnp.float64)
    else:  # op by op: a small model keeps the number of primitives to dispatch small
        model = mbp.Sequential(mbp.Dense(6), mbp.Tanh(), mbp.Dense(4))
        params, _ = model.init(jax.random.key(0), (3,), jnp.float64)
        x = _normal((5, 3), jnp.float64)
    y = jnp.array([0, 1, 2, 3, 1])
    f = mbp.as_function(model)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean()

    value, grads = (jax.jit(jax.value_and_grad(loss)) if jit else jax.value_and_grad(loss))(params, x, y)
    value_r, grads_r = ref.value_and_grad(model, mbp.SoftmaxCrossEntropy())(params, x, y)
    tol = mbp.tolerance(jnp.float64)
    assert judge("model", "loss", value, value_r, tol).ok
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads_r)):
        row = judge("model", jax.tree_util.keystr(path), g, r, tol)
        assert row.ok, row


def test_vmap_and_integer_inputs():
    """Embedding's ids get no cotangent, and jax.vmap over sequences equals the loop over them (and the reference)."""
    model = mbp.Sequential(mbp.Embedding(6, 3), mbp.RNN(4), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (5,), jnp.float64)
    ids = jax.random.randint(jax.random.key(1), (3, 1, 5), 0, 6)  # 3 batches of one sequence
    f = mbp.as_function(model)
    grad = jax.jit(jax.grad(lambda p, i: jnp.sum(f(p, i) ** 2)))
    grad_r = jax.jit(jax.grad(lambda p, i: jnp.sum(ref.apply(model, p, i) ** 2)))
    batched = jax.vmap(grad, in_axes=(None, 0))(params, ids)
    tol = mbp.tolerance(jnp.float64)
    for n in range(ids.shape[0]):
        for want in (grad(params, ids[n]), grad_r(params, ids[n])):
            for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(batched), jax.tree_util.tree_leaves(want)):
                row = judge("model", jax.tree_util.keystr(path), g[n], r, tol)
                assert row.ok, row


def test_second_order_is_a_clear_error_not_a_silent_hessian():
    model = mbp.Sequential(mbp.Dense(3), mbp.Tanh(), mbp.Dense(1))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    x = _normal((4, 2), jnp.float64)
    f = mbp.as_function(model)

    def loss(p):
        return jnp.sum(f(p, x) ** 2)

    jax.jit(jax.grad(loss))(params)  # first order: fine
    msg = r"as_function\(Sequential\): second-order derivatives through a manual backward are not supported"
    with pytest.raises(NotImplementedError, match=msg):  # raised while tracing: under jit nothing runs first
        jax.jit(jax.hessian(loss))(params)
    with pytest.raises(NotImplementedError, match=msg):  # reverse over reverse, under jit too
        jax.jit(jax.grad(lambda p: jnp.sum(jax.grad(loss)(p)[0]["W"] ** 2)))(params)
    tanh = mbp.as_function(mbp.Tanh())
    with pytest.raises(NotImplementedError, match=r"as_function\(Tanh\): second-order"):
        jax.grad(jax.grad(lambda s: tanh({}, s.reshape(1, 1))[0, 0]))(0.3)
    with pytest.raises(TypeError, match=r"can't apply forward-mode autodiff \(jvp\) to a custom_vjp function"):
        jax.jvp(lambda x: f(params, x), (x,), (x,))


@dataclass(frozen=True)
class Scaled:
    """y = a x with a backward that can be made wrong in structure, shape or dtype."""

    bug: str = ""

    def forward(self, params, x):
        return params["a"] * x, x

    def backward(self, params, x, dy):
        da, dx = jnp.sum(dy * x), dy * params["a"]
        if self.bug == "structure":
            return {"a": da, "b": da}, dx
        if self.bug == "shape":
            return {"a": da}, jnp.sum(dx, axis=0)
        if self.bug == "dtype":
            return {"a": da.astype(jnp.float32)}, dx
        return {"a": da}, None


@pytest.mark.parametrize("bug, error, message", [
    ("structure", ValueError, r"as_function\(Scaled\): model Scaled: extra gradient: its backward returned a gradient "
                              r"db \(float64\[\]\) for a parameter b it does not have"),
    ("shape", ValueError, r"as_function\(Scaled\): backward returned a gradient of shape \(2,\) for input x of shape "
                          r"\(3, 2\)"),
    ("dtype", TypeError, r"as_function\(Scaled\): model Scaled: wrong structure gradient: its backward returned "
                         r"float32\[\] for parameter a, which is float64\[\]"),
    ("none", ValueError, r"as_function\(Scaled\): backward returned dx = None for a floating input x"),
])
def test_a_backward_that_does_not_match_its_arguments_is_named(bug, error, message):
    f = mbp.as_function(Scaled(bug))
    params, x = {"a": jnp.float64(1.5)}, _normal((3, 2), jnp.float64)
    with pytest.raises(error, match=message):
        jax.grad(lambda p, x: jnp.sum(f(p, x)), argnums=(0, 1))(params, x)
