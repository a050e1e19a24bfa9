"""Flatten: manual vs jax.vjp of jnp.reshape, shapes, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 6), (3, 2, 7)], ids=str)
def test_matches_reference(shape, dtype):
    x = host(np.random.default_rng(0).standard_normal(shape), dtype)
    dy = host(np.random.default_rng(1).standard_normal((shape[0], int(np.prod(shape[1:])))), dtype)
    report = mbp.check_layer(mbp.Flatten(), {}, x, dy)
    assert report.ok, str(report)
    assert mbp.Flatten().output_shape(shape[1:]) == dy.shape[1:]


def test_bad_input():
    with pytest.raises(ValueError, match=r"Flatten: expected x of rank >= 2, got shape \(5,\)"):
        mbp.Flatten().forward({}, jnp.ones(5))
