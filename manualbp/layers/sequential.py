"""Containers: Sequential (a chain) and Parallel (a fork into a tuple)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.arguments import check_layer_object
from manualbp.layers.base import Layer, child_stats, forward_eval_of, update_stats_of, with_child_stats
from manualbp.layers.walk import require_dx


def _check_split(container, params):
    n = len(container.layers)
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        raise ValueError(
            f"{container.name}: expected params as a tuple of {n} per-layer entries, got {got}; "
            "the params tree does not match the model"
        )
    return tuple(params)


def _check_input(layer, params, x):
    if hasattr(layer, "check_input"):  # a user's layer need not define it
        layer.check_input(params, x)


class _Container(Layer):
    @property
    def children(self):
        return tuple((str(i), layer) for i, layer in enumerate(self.layers))

    def split_params(self, params):
        return _check_split(self, params)

    def replace_children(self, layers):
        return type(self)(*layers)

    def kink_pattern(self, cache):
        return tuple(
            layer.kink_pattern(c) if getattr(layer, "kink_pattern", None) else None
            for layer, c in zip(self.layers, cache)
        )

    def update_stats(self, stats, cache):
        """Every child's running statistics advanced from its part of a training forward's cache.

        stats: keyed by the path of each layer that keeps some ({} when none does); returns the same keys.
        """
        new = {}
        for (name, layer), c in zip(self.children, cache):
            with_child_stats(new, name, layer, update_stats_of(layer, child_stats(stats, name, layer), c))
        return new


@dataclass(frozen=True, init=False)
class Sequential(_Container):
    """y = f_L(... f_2(f_1(x))). Params: a tuple with one entry per layer.

    Backward is the delta recursion over the caches in reverse:
    dy_L = dy; (dparams_l, dy_(l-1)) = f_l.backward(params_l, cache_l, dy_l).
    """

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            check_layer_object("Sequential", layer, f"layer {i}")
        object.__setattr__(self, "layers", tuple(layers))

    def init(self, key, input_shape, dtype=jnp.float32):
        params = []
        shape = tuple(input_shape)
        for layer, k in zip(self.layers, jax.random.split(key, max(len(self.layers), 1))):
            p, shape = layer.init(k, shape, dtype)
            params.append(p)
        return tuple(params), shape

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def check_input(self, params, x):
        """The input's value checks are the first layer's (only it sees x itself)."""
        if self.layers:
            _check_input(self.layers[0], self.split_params(params)[0], x)

    def forward(self, params, x):
        params = self.split_params(params)
        caches = []
        for layer, p in zip(self.layers, params):
            x, c = layer.forward(p, x)
            caches.append(c)
        return x, tuple(caches)

    def forward_eval(self, params, stats, x):
        """Evaluation mode: each layer's ``forward_eval`` (BatchNorm: running ``stats``) where it has one.

        x: (B, ...) with any B >= 1 -> the model's output. Not differentiated (no cache).
        """
        for (name, layer), p in zip(self.children, self.split_params(params)):
            x = forward_eval_of(layer, p, child_stats(stats, name, layer), x)
        return x

    def backward(self, params, cache, dy):
        """delta recursion: walk the layers in reverse, each turning dL/dy_l into dL/dx_l."""
        params = self.split_params(params)
        grads = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)
            if i > 0:
                require_dx(self, str(i), self.layers[i], dy)
        return tuple(grads), dy


@dataclass(frozen=True, init=False)
class Parallel(_Container):
    """x -> (f_1(x), ..., f_n(x)): a fork. Params: a tuple with one entry per branch.

    x is used n times, so its gradient is the sum of the branches' input
    gradients: dx = sum_i df_i/dx^T dy_i (the add node's rule in reverse).
    """

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Parallel: needs at least one branch")
        for i, layer in enumerate(layers):
            check_layer_object("Parallel", layer, f"branch {i}")
        object.__setattr__(self, "layers", tuple(layers))

    def init(self, key, input_shape, dtype=jnp.float32):
        outs = [layer.init(k, input_shape, dtype) for layer, k in zip(self.layers, jax.random.split(key, len(self.layers)))]
        return tuple(p for p, _ in outs), tuple(s for _, s in outs)

    def output_shape(self, input_shape):
        return tuple(layer.output_shape(input_shape) for layer in self.layers)

    def check_input(self, params, x):
        """Every branch sees x: each checks its values."""
        for layer, p in zip(self.layers, self.split_params(params)):
            _check_input(layer, p, x)

    def forward(self, params, x):
        params = self.split_params(params)
        outs = [layer.forward(p, x) for layer, p in zip(self.layers, params)]
        return tuple(y for y, _ in outs), tuple(c for _, c in outs)

    def forward_eval(self, params, stats, x):
        """Evaluation mode: every branch's ``forward_eval`` (running ``stats``) where it has one."""
        return tuple(forward_eval_of(layer, p, child_stats(stats, name, layer), x)
                     for (name, layer), p in zip(self.children, self.split_params(params)))

    def backward(self, params, cache, dy):
        """dx = sum over branches of each branch's dx."""
        params = self.split_params(params)
        if not isinstance(dy, (tuple, list)) or len(dy) != len(self.layers):
            raise ValueError(f"Parallel: expected dy as a tuple of {len(self.layers)} arrays")
        grads, dxs = zip(*[layer.backward(p, c, d) for layer, p, c, d in zip(self.layers, params, cache, dy)])
        if all(dxi is None for dxi in dxs):  # an input with no gradient (ids): no branch returns one
            return tuple(grads), None
        for (name, layer), dxi in zip(self.children, dxs):
            require_dx(self, name, layer, dxi)  # a branch that left dx out would silently drop its term of the sum
        return tuple(grads), functools.reduce(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b), dxs)
