"""The checkers compile a handful of programs, not one per operation: counted, not timed.

A first ``check_layer``, ``compare`` or ``gradcheck`` on a new shape is mostly XLA compile time, about
20 ms for each program however small. Before, a jax.vjp run eagerly compiled one program per primitive
of the reference (13 programs for one Dense under ``check_layer(jit=True)``), ``jnp.asarray`` of a NumPy
input one copy per shape, and gradcheck's jax.random directions and its dot products one per leaf shape
(40 programs for a two-layer MLP). Each test counts the programs lowered (a persistent-cache hit is
lowered too) during one call on NumPy data.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import manualbp as mbp
from manualbp.layers.base import as_array

_COUNTING = []


def _listener(event, duration, **kwargs):
    if _COUNTING and event.endswith("jaxpr_to_mlir_module_duration"):
        _COUNTING[-1] += 1


monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def lowered():
    """Counts the programs lowered inside the block: ``with lowered() as n: ...; n[0]``."""
    _COUNTING.append(0)
    box = [0]
    try:
        yield box
    finally:
        box[0] = _COUNTING.pop()


@pytest.mark.parametrize("value", [np.ones((3, 7)), np.arange(5), np.float32(2.5), np.ones(4, jnp.bfloat16),
                                   np.array(True), np.ones((0, 3))], ids=lambda v: f"{np.asarray(v).dtype}{np.shape(v)}")
def test_as_array_is_jnp_asarray_without_a_compile(value):
    with lowered() as n:
        got = as_array(value)
    want = jnp.asarray(value)
    assert n[0] == 0
    assert (got.dtype, got.shape, got.weak_type) == (want.dtype, want.shape, want.weak_type)
    assert np.array_equal(np.asarray(got), np.asarray(want))


def _point(seed=0):
    rng = np.random.default_rng(seed)
    model = mbp.Sequential(mbp.Dense(4), mbp.Tanh(), mbp.Dense(3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), (11,), jnp.float64)[0])
    params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape), shapes)
    return model, params, rng.standard_normal((4, 11)), np.array([0, 1, 2, 1])


def test_check_layer_compiles_the_manual_pass_and_the_reference_once_each():
    rng = np.random.default_rng(1)
    params = {"W": rng.standard_normal((13, 5)), "b": rng.standard_normal(5)}
    with lowered() as n:
        report = mbp.check_layer(mbp.Dense(5), params, rng.standard_normal((3, 13)), rng.standard_normal((3, 5)), jit=True)
    assert report.ok and n[0] <= 2, n[0]  # before: 13


def test_compare_compiles_the_manual_pass_and_the_reference_once_each():
    model, params, x, y = _point()
    with lowered() as n:
        report = mbp.compare(model, mbp.SoftmaxCrossEntropy(), params, x, y)
    assert report.ok and n[0] <= 2, n[0]  # before: 4


def test_gradcheck_draws_its_directions_without_compiling():
    model, params, x, y = _point(2)
    with lowered() as n:
        report = mbp.gradcheck(model, mbp.SoftmaxCrossEntropy(), params, x, y, k=3)
    # the gradient, the loss, the line, and (once per process) the default key and its bits; before: 40
    assert report.ok and n[0] <= 5, n[0]
