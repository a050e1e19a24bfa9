"""A Dense layer with its parameters sharded ZeRO-3 / FSDP style across the mesh's "batch" axis.

Data parallelism keeps a whole copy of W on each of the n devices of the batch axis; ZeRO-3
(FSDP) keeps 1/n of it on each and gathers the whole only for the moment it is used:

    W = all_gather_d(W_d)                    GATHER_SUMMED forward (rows of W, and b, split by device)
    y_d = x_d W + b                          device d's own batch shard x_d
    dW_d = (sum_e x_e^T dy_e)[slice d]       GATHER_SUMMED backward: psum_scatter of every device's
                                             partial gradient, each keeping its own rows

The cotangent each device holds for the gathered W is its batch shard's part of the gradient, so
the adjoint of the gather is a reduce-scatter (``collectives``' GATHER_SUMMED), not the own-slice
of a gather whose users do the same work (GATHER). The backward gathers W again instead of
keeping it from the forward (FSDP frees the gathered weights between the two passes), so no
device ever holds more than one layer's whole W. dx = dy W^T stays on the device's batch shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from manualbp.layers.base import Layer, check_dy
from manualbp.layers.collectives import BATCH, GATHER_SUMMED, activation, check_divisible, run
from manualbp.layers.dense import Dense
from manualbp.layers.tensor_parallel import check_dense_input, check_tensor_parallel


@dataclass(frozen=True)
class FSDPDense(Layer):
    """y = x W + b, with W's rows and b split across the "batch" axis and gathered when used (module docstring).

    Attributes:
      features: output width (divisible by the batch axis's size n, as b is split).
      mesh: a ``jax.sharding.Mesh`` with axes ("batch", "model"); the "model" axis replicates the layer.
      use_bias: whether to add b.

    Params (whole arrays): W (in, features) with ``in`` divisible by n, b (features,); on devices
    W[slice d, :] and b[slice d]. Collective: ``gather`` (GATHER_SUMMED) on the parameters.
    """

    features: int
    mesh: Mesh
    use_bias: bool = True

    gather = GATHER_SUMMED  # parameters: all_gather forward, psum_scatter (reduce-scatter) of the gradient backward

    def __post_init__(self):
        check_tensor_parallel(self, self.features, self.mesh)
        check_divisible(self.name, "features", self.features, self.mesh, BATCH)

    def _dense(self) -> Dense:
        return Dense(self.features, self.use_bias)

    def param_specs(self) -> dict:
        specs = {"W": P(BATCH, None), "b": P(BATCH)}
        return {k: specs[k] for k in self._dense()._keys()}

    def init(self, key, input_shape, dtype=jnp.float32):
        return self._dense().init(key, input_shape, dtype)

    def forward(self, params, x):
        """x: (B, ..., in) -> y: (B, ..., features); cache: x (W is gathered again in the backward)."""
        check_dense_input(self, params, x, self.features, self.use_bias, self.mesh)
        check_divisible(self.name, "in (the input's last axis)", x.shape[-1], self.mesh, BATCH)
        x_spec = activation(x.ndim)

        def local(p, x):
            return self._dense().forward(self.gather.forward(p, BATCH, 0), x)[0]

        return run(self.mesh, local, (self.param_specs(), x_spec), x_spec)(params, x), x

    def backward(self, params, cache, dy):
        """Dense's BP2-BP4 on the device's batch shard with the gathered W, then the gather's adjoint.

        .. math::
            dW_d = \\mathrm{psum\\_scatter}(x_e^T dy_e)_d,\\quad db_d = \\mathrm{psum\\_scatter}(\\textstyle\\sum_n dy_{e,n})_d,
            \\quad dx_e = dy_e W^T

        (e: this device's batch shard; d: its rows of W).
        """
        check_dy(self, dy, (*cache.shape[:-1], self.features), cache.dtype)
        x_spec = activation(cache.ndim)

        def local(p, x, dy):
            grads, dx = self._dense().backward(self.gather.forward(p, BATCH, 0), x, dy)
            return self.gather.backward(grads, BATCH, 0), dx

        return run(self.mesh, local, (self.param_specs(), x_spec, x_spec), (self.param_specs(), x_spec))(
            params, cache, dy)
