"""Residual(block): y = x + block(x), the identity path of a ResNet."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from manualbp.layers.arguments import check_layer_object
from manualbp.layers.base import Layer, check_array, child_stats, forward_eval_of, update_stats_of, with_child_stats
from manualbp.layers.walk import require_dx


@dataclass(frozen=True)
class Residual(Layer):
    """y = x + F(x) with F = ``block`` (any layer, e.g. a ``Sequential``); F must keep x's shape.

    Params: the block's params, unchanged (so the gradients are the block's).
    As a container it has one child, named "block".

    Seed 000: x^(l+1) = x^(l) + F(x^(l)) gives
    dE/dx^(l) = dE/dx^(l+1) (1 + dF/dx^(l)): the upstream gradient reaches
    the input unchanged along the identity path, whatever F's factors do.
    """

    block: object

    def __post_init__(self):
        check_layer_object("Residual", self.block, "the block")

    @property
    def children(self):
        return (("block", self.block),)

    def split_params(self, params):
        return (params,)

    def replace_children(self, layers):
        (block,) = layers
        return Residual(block)

    def _shape_error(self, in_shape, out_shape):
        return ValueError(
            f"Residual: the block {self.block.name} must keep its input's shape for y = x + block(x); "
            f"it maps {tuple(in_shape)} to {tuple(out_shape)}"
        )

    def init(self, key, input_shape, dtype=jnp.float32):
        params, out_shape = self.block.init(key, input_shape, dtype)
        if tuple(out_shape) != tuple(input_shape):
            raise self._shape_error(input_shape, out_shape)
        return params, tuple(input_shape)

    def check_input(self, params, x):
        if hasattr(self.block, "check_input"):
            self.block.check_input(params, x)

    def forward(self, params, x):
        """x: (B, ...) -> y = x + block(x) of x's shape; cache: the block's cache."""
        check_array(self, x)
        fx, cache = self.block.forward(params, x)
        if not hasattr(fx, "shape") or tuple(fx.shape) != tuple(x.shape):
            raise self._shape_error(x.shape, getattr(fx, "shape", type(fx).__name__))
        return x + fx, cache

    def forward_eval(self, params, stats, x):
        """Evaluation mode: y = x + block(x) with the block's ``forward_eval`` (running ``stats``) where it has one."""
        check_array(self, x)
        return x + forward_eval_of(self.block, params, child_stats(stats, "block", self.block), x)

    def update_stats(self, stats, cache):
        """The block's running statistics advanced from its training forward's cache (keys under "block")."""
        block = update_stats_of(self.block, child_stats(stats, "block", self.block), cache)
        return with_child_stats({}, "block", self.block, block)

    def backward(self, params, cache, dy):
        """The add node, then the block:

        .. math::
            dx = dy + (\\partial F/\\partial x)^T dy, \\qquad dparams = dparams_F

        dy: of x's shape; returns (the block's dparams, dx of x's shape).
        """
        dparams, dx_block = self.block.backward(params, cache, dy)
        require_dx(self, "block", self.block, dx_block)
        return dparams, dy + dx_block

    def kink_pattern(self, cache):
        return self.block.kink_pattern(cache) if getattr(self.block, "kink_pattern", None) else None
