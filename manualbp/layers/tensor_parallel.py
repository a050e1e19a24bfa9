"""Megatron's tensor-parallel Dense layers: W split by columns, or by rows, across the mesh's "model" axis.

With n devices on the model axis and W = [W_1 | ... | W_n] split by columns (output features),

    ColumnParallelDense:  y_d = x W_d + b_d        (x replicated; y split on its last axis)

and with W = [W_1; ...; W_n] split by rows (input features), x split the same way,

    RowParallelDense:     y = sum_d x_d W_d + b    (a psum; y replicated)

Megatron's MLP is the one followed by the other, Column -> GELU -> Row: the GELU acts on each
device's own slice of the hidden layer, and the block needs two collectives, COPY in (its psum
of dx in the backward) and REDUCE out (its psum of y in the forward). Each device runs an ordinary
``Dense`` on its slice (the BP2-BP4 of ``dense``), between the collectives of ``collectives``,
where each adjoint is derived.

Parameters are whole arrays (W of shape (in, out), as ``Dense``'s), so a model's parameters,
its gradients and a comparison with jax.grad of the unsharded reference do not depend on how
many devices share them; ``param_specs`` says how training lays them out (each device then
holds 1/n of W).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from manualbp.layers.activations import GELU
from manualbp.layers.base import Layer, check_array, check_dy, check_param, check_params
from manualbp.layers.collectives import (
    BATCH,
    COPY,
    GATHER,
    MODEL,
    REDUCE,
    SPLIT,
    activation,
    check_divisible,
    check_mesh,
    model_size,
    run,
    sum_over_batch,
)
from manualbp.layers.dense import Dense
from manualbp.layers.sequential import Sequential


def check_tensor_parallel(layer, features: int, mesh):
    """The constructor checks every tensor-parallel layer shares: a positive width and a (batch, model) mesh."""
    if not isinstance(features, int) or isinstance(features, bool) or features <= 0:
        raise ValueError(f"{layer.name}: features must be a positive int, got {features!r}")
    check_mesh(layer.name, mesh)


def check_dense_input(layer, params, x, features: int, use_bias: bool, mesh):
    """Shapes of a whole-array Dense (W (in, features), b (features,)) and a batch that splits over the mesh."""
    check_params(layer, params, ("W", "b") if use_bias else ("W",))
    check_array(layer, x, min_ndim=2)
    check_param(layer, params, "W", (x.shape[-1], features), like=x, why="(in, features)")
    if use_bias:
        check_param(layer, params, "b", (features,), like=x, why="(features,)")
    check_divisible(layer.name, "batch", x.shape[0], mesh, BATCH)


def add_bias(y, b):
    return y + b[(None,) * (y.ndim - 1)]  # explicit broadcast over leading axes


@dataclass(frozen=True)
class ColumnParallelDense(Layer):
    """y = x W + b with W split by columns across the "model" axis: device d computes y_d = x W_d + b_d.

    Attributes:
      features: output width (divisible by the model axis's size n).
      mesh: a ``jax.sharding.Mesh`` with axes ("batch", "model").
      use_bias: whether to add b (split like W's columns).
      gather_output: all_gather y so that it leaves replicated; otherwise y leaves split on its last
        axis, as the next RowParallelDense wants it.

    Params (whole arrays): W (in, features), b (features,); on devices W[:, slice d] and b[slice d].
    Collectives: ``enter`` (COPY) on x, ``leave`` (GATHER) on y when gathered.
    """

    features: int
    mesh: Mesh
    use_bias: bool = True
    gather_output: bool = False

    enter = COPY  # x is used by every device: identity forward, psum of dx backward
    leave = GATHER  # y gathered for replicated work after it: all_gather forward, own slice backward

    def __post_init__(self):
        check_tensor_parallel(self, self.features, self.mesh)
        check_divisible(self.name, "features", self.features, self.mesh)

    def param_specs(self) -> dict:
        specs = {"W": P(None, MODEL), "b": P(MODEL)}
        return {k: specs[k] for k in Dense(self.features, self.use_bias)._keys()}

    def _local(self) -> Dense:
        return Dense(self.features // model_size(self.mesh), self.use_bias)

    def _specs(self, x):
        return self.param_specs(), activation(x.ndim), activation(x.ndim, None if self.gather_output else MODEL)

    def init(self, key, input_shape, dtype=jnp.float32):
        return Dense(self.features, self.use_bias).init(key, input_shape, dtype)

    def forward(self, params, x):
        """x: (B, ..., in) -> y: (B, ..., features), split on its last axis unless gathered; cache: x."""
        check_dense_input(self, params, x, self.features, self.use_bias, self.mesh)
        p_spec, x_spec, y_spec = self._specs(x)

        def local(p, x):
            y, _ = self._local().forward(p, self.enter.forward(x, MODEL))
            return self.leave.forward(y, MODEL) if self.gather_output else y

        return run(self.mesh, local, (p_spec, x_spec), y_spec)(params, x), x

    def backward(self, params, cache, dy):
        """Each device's Dense backward on its slice, then the adjoints of ``enter`` (and ``leave``).

        .. math::
            dW_d = x^T dy_d,\\quad db_d = \\sum_n dy_{d,n},\\quad
            dx = \\sum_d dy_d W_d^T = \\mathrm{psum}(dy_d W_d^T)

        (dy_d = dy[..., slice d]: GATHER's adjoint when y was gathered.) The parameter gradients are
        summed over the batch axis (``sum_over_batch``); dx leaves replicated.
        """
        check_dy(self, dy, (*cache.shape[:-1], self.features), cache.dtype)
        p_spec, x_spec, y_spec = self._specs(cache)

        def local(p, x, dy):
            if self.gather_output:
                dy = self.leave.backward(dy, MODEL)
            grads, dx = self._local().backward(p, x, dy)
            return sum_over_batch(grads), self.enter.backward(dx, MODEL)

        return run(self.mesh, local, (p_spec, x_spec, y_spec), (p_spec, x_spec))(params, cache, dy)


@dataclass(frozen=True)
class RowParallelDense(Layer):
    """y = x W + b with W split by rows across the "model" axis: y = psum_d(x_d W_d) + b.

    Attributes:
      features: output width.
      mesh: a ``jax.sharding.Mesh`` with axes ("batch", "model").
      use_bias: whether to add b (replicated; added once, after the psum).
      input_is_parallel: x arrives split on its last axis (after a ColumnParallelDense); otherwise x
        is replicated and each device first keeps its slice (``SPLIT``).

    Params (whole arrays): W (in, features) with ``in`` divisible by n, b (features,); on devices
    W[slice d, :] and the whole b. Collectives: ``enter`` (SPLIT, when x is replicated), ``leave``
    (REDUCE) on y.
    """

    features: int
    mesh: Mesh
    use_bias: bool = True
    input_is_parallel: bool = True

    enter = SPLIT  # a replicated x, sliced: own slice forward, all_gather of dx backward
    leave = REDUCE  # partial products summed: psum forward, identity backward

    def __post_init__(self):
        check_tensor_parallel(self, self.features, self.mesh)

    def param_specs(self) -> dict:
        specs = {"W": P(MODEL, None), "b": P()}
        return {k: specs[k] for k in Dense(self.features, self.use_bias)._keys()}

    def _specs(self, x):
        x_spec = activation(x.ndim, MODEL if self.input_is_parallel else None)
        return self.param_specs(), x_spec, activation(x.ndim)

    def _slice(self, x):
        return x if self.input_is_parallel else self.enter.forward(x, MODEL)

    def init(self, key, input_shape, dtype=jnp.float32):
        return Dense(self.features, self.use_bias).init(key, input_shape, dtype)

    def forward(self, params, x):
        """x: (B, ..., in) -> y: (B, ..., features), replicated; cache: x."""
        check_dense_input(self, params, x, self.features, self.use_bias, self.mesh)
        check_divisible(self.name, "in (the input's last axis)", x.shape[-1], self.mesh)
        p_spec, x_spec, y_spec = self._specs(x)

        def local(p, x):
            partial, _ = Dense(self.features, use_bias=False).forward({"W": p["W"]}, self._slice(x))
            y = self.leave.forward(partial, MODEL)
            return add_bias(y, p["b"]) if self.use_bias else y

        return run(self.mesh, local, (p_spec, x_spec), y_spec)(params, x), x

    def backward(self, params, cache, dy):
        """REDUCE's adjoint gives every device the whole dy; then each device's Dense backward on its rows.

        .. math::
            dW_d = x_d^T dy,\\quad db = \\sum_n dy_n,\\quad dx_d = dy\\, W_d^T

        dx leaves split like x (all_gathered by SPLIT's adjoint when x came in replicated); the
        parameter gradients are summed over the batch axis.
        """
        check_dy(self, dy, (*cache.shape[:-1], self.features), cache.dtype)
        p_spec, x_spec, y_spec = self._specs(cache)

        def local(p, x, dy):
            dy = self.leave.backward(dy, MODEL)
            grads, dx = Dense(self.features, use_bias=False).backward({"W": p["W"]}, self._slice(x), dy)
            if self.use_bias:
                grads["b"] = jnp.sum(dy.reshape(-1, dy.shape[-1]), axis=0)  # BP3, b added once after the psum
            dx = dx if self.input_is_parallel else self.enter.backward(dx, MODEL)
            return sum_over_batch(grads), dx

        return run(self.mesh, local, (p_spec, x_spec, y_spec), (p_spec, x_spec))(params, cache, dy)


def parallel_mlp(hidden: int, features: int, mesh: Mesh) -> Sequential:
    """Megatron's tensor-parallel MLP: ColumnParallelDense(hidden) -> GELU -> RowParallelDense(features).

    One COPY in (psum of dx in the backward) and one REDUCE out (psum of y in the forward); the
    GELU acts on each device's own columns of the hidden layer, with no collective.
    """
    return Sequential(ColumnParallelDense(hidden, mesh), GELU(), RowParallelDense(features, mesh))
