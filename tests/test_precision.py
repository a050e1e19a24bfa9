"""The checkers trace their programs with matrix products at full precision, unless the user set a precision.

On a GPU, float32 products default to TF32, and a correct Conv2D's dW failed against jax.grad by 3e-4
(manualbp/verify/precision.py). A CPU computes both alike, so here the test reads the option each trace sees.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from arrays import host

import manualbp as mbp
from manualbp.training import data

SEEN = []


@dataclass(frozen=True)
class Spy(mbp.Identity):
    """The identity, recording the matmul precision its forward is traced with."""

    def forward(self, params, x):
        SEEN.append(jax.config.jax_default_matmul_precision)
        return super().forward(params, x)


mbp.register_reference(Spy, lambda layer, params, x: x)
MODEL = mbp.Sequential(mbp.Dense(3), Spy())
HEAD = mbp.SoftmaxCrossEntropy()


def _point():
    params, _ = MODEL.init(jax.random.key(0), (4,), jnp.float64)
    return params, host(np.random.default_rng(0).standard_normal((2, 4)), jnp.float64), host([0, 2], jnp.int32)


CHECKERS = {
    "compare": lambda p, x, y: mbp.compare(MODEL, HEAD, p, x, y),
    "check_layer": lambda p, x, y: mbp.check_layer(Spy(), {}, x, jit=True),
    "gradcheck": lambda p, x, y: mbp.gradcheck(MODEL, HEAD, p, x, y, k=1),
    "check_vjp": lambda p, x, y: mbp.check_vjp(mbp.as_function(MODEL), lambda p, x: x @ p[0]["W"] + p[0]["b"][None], p, x),
}


@pytest.mark.parametrize("checker", list(CHECKERS))
def test_checkers_trace_at_highest_precision(checker):
    SEEN.clear()
    params, x, y = _point()
    assert CHECKERS[checker](params, x, y).ok
    assert SEEN and set(SEEN) == {"highest"}
    assert jax.config.jax_default_matmul_precision is None  # restored after the call


def test_a_precision_the_user_set_is_kept():
    SEEN.clear()
    params, x, y = _point()
    with jax.default_matmul_precision("tensorfloat32"):
        assert mbp.compare(MODEL, HEAD, params, x, y).ok
    assert SEEN and set(SEEN) == {"tensorfloat32"}


def test_twin_runs_trace_at_highest_precision():
    SEEN.clear()
    d = data.spirals(n_train=32, n_test=8, dtype="float64")
    model = mbp.Sequential(mbp.Dense(3), Spy(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    result = mbp.train_twin(model, HEAD, params, d, optimizer=optax.sgd(0.1), steps=2, batch_size=8,
                            key=jax.random.key(1))
    assert result.divergence.ok
    assert SEEN and set(SEEN) == {"highest"}
