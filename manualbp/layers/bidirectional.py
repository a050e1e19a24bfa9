"""Bidirectional(rnn): a recurrent layer run forward and on the time-reversed sequence, outputs side by side."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.base import Layer, check_array, name_of


def _check_recurrent(which: str, layer):
    if not (hasattr(layer, "forward") and hasattr(layer, "backward")):
        raise TypeError(f"Bidirectional: {which} {layer!r} is not a layer (needs forward and backward)")
    if getattr(layer, "initial_state", "zeros") != "zeros":
        raise ValueError(
            f"Bidirectional: the {which} layer {name_of(layer)} has initial_state={layer.initial_state!r}; "
            "Bidirectional takes x alone, so both directions start from zeros (initial_state='zeros')"
        )


def _reverse_time(a):
    """(B, T, ...) with the time axis reversed: step t <-> step T - 1 - t (a permutation: its own adjoint)."""
    return jnp.flip(a, axis=1)


@dataclass(frozen=True)
class Bidirectional(Layer):
    """y = [f(x), reverse(g(reverse(x)))]: ``layer`` f reads x forward, a copy g reads it backward.

    .. math::
        \\overrightarrow{h}_t = f(x_1..x_t),\\qquad \\overleftarrow{h}_t = g(x_T..x_t),\\qquad
        y_t = [\\overrightarrow{h}_t, \\overleftarrow{h}_t]

    so every output step sees the whole sequence. With
    ``return_sequences=False`` the layers give their last states, and y is
    [f's h_T, g's state after reading x_T .. x_1] (Keras' convention).

    Attributes:
      layer: a recurrent layer (RNN, LSTM, GRU, or your own with the same
        interface) with ``initial_state="zeros"``.
      backward_layer: the layer that reads the reversed sequence; default: a
        copy of ``layer`` (same hyperparameters, its own params).

    Shapes: x (B, T, D) -> y (B, T, H_f + H_b), or (B, H_f + H_b) for
    last-step layers. Params: ``{"forward": f's params, "backward": g's}``.
    As a container its children are named "forward" and "backward"; the
    backward child's per-step rows (dL/dh[t]) count ITS steps: its t = 0 is
    x's last step T - 1.
    """

    layer: object
    backward_layer: object = None

    def __post_init__(self):
        if self.backward_layer is None:
            object.__setattr__(self, "backward_layer", self.layer)
        _check_recurrent("forward", self.layer)
        _check_recurrent("backward", self.backward_layer)
        seqs = [getattr(layer, "return_sequences", None) for layer in (self.layer, self.backward_layer)]
        if None not in seqs and seqs[0] != seqs[1]:
            raise ValueError(f"Bidirectional: both layers must agree on return_sequences, got {seqs[0]} and {seqs[1]}")

    @property
    def children(self):
        return (("forward", self.layer), ("backward", self.backward_layer))

    def split_params(self, params):
        if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(
                f"Bidirectional: expected params as a dict with keys ['backward', 'forward'], got {got}; "
                "the params tree does not match the model"
            )
        return params["forward"], params["backward"]

    def replace_children(self, layers):
        return Bidirectional(*layers)

    def _merge_shapes(self, fwd, bwd):
        if len(fwd) != len(bwd) or tuple(fwd[:-1]) != tuple(bwd[:-1]):
            raise ValueError(f"Bidirectional: the two directions' outputs {tuple(fwd)} and {tuple(bwd)} cannot be concatenated")
        return (*fwd[:-1], fwd[-1] + bwd[-1])

    def output_shape(self, input_shape):
        return self._merge_shapes(self.layer.output_shape(input_shape), self.backward_layer.output_shape(input_shape))

    def init(self, key, input_shape, dtype=jnp.float32):
        kf, kb = jax.random.split(key)
        pf, sf = self.layer.init(kf, input_shape, dtype)
        pb, sb = self.backward_layer.init(kb, input_shape, dtype)
        return {"forward": pf, "backward": pb}, self._merge_shapes(sf, sb)

    def forward(self, params, x):
        """x: (B, T, D) -> y: (B, T, H_f + H_b) or (B, H_f + H_b).

        Cache: both layers' caches, and H_f (where dy splits).
        """
        check_array(self, x, ndim=3)
        pf, pb = self.split_params(params)
        yf, cf = self.layer.forward(pf, x)
        yb, cb = self.backward_layer.forward(pb, _reverse_time(x))
        if yb.ndim == 3:
            yb = _reverse_time(yb)  # back to x's time order: y_t = [h_t forward, h_t backward]
        return jnp.concatenate([yf, yb], axis=-1), (cf, cb, yf.shape[-1])

    def backward(self, params, cache, dy):
        """Split dy, reverse the backward half's time, run both layers' BPTT, reverse and add their dx.

        .. math::
            dy = [dy^f, dy^b],\\qquad
            dx = \\mathrm{BPTT}_f(dy^f) + \\mathrm{rev}(\\mathrm{BPTT}_g(\\mathrm{rev}(dy^b)))

        x feeds both directions, so dx is the sum of the two input
        gradients (the fork's rule); reversing time is a permutation, whose
        adjoint is the same reversal.
        """
        cf, cb, split = cache
        pf, pb = self.split_params(params)
        dyf, dyb = dy[..., :split], dy[..., split:]
        if dyb.ndim == 3:
            dyb = _reverse_time(dyb)
        gf, dxf = self.layer.backward(pf, cf, dyf)
        gb, dxb = self.backward_layer.backward(pb, cb, dyb)
        return {"forward": gf, "backward": gb}, dxf + _reverse_time(dxb)

    def kink_pattern(self, cache):
        cf, cb, _ = cache
        return tuple(layer.kink_pattern(c) if hasattr(layer, "kink_pattern") else None
                     for layer, c in ((self.layer, cf), (self.backward_layer, cb)))
