"""Bidirectional(rnn): a recurrent layer run forward and on the time-reversed sequence, outputs side by side."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers.arguments import check_layer_object
from manualbp.layers.base import Layer, check_array, check_dy, describe, name_of, spec


def _check_recurrent(which: str, layer):
    check_layer_object("Bidirectional", layer, f"the {which} layer")
    if not hasattr(layer, "return_sequences"):
        raise TypeError(
            f"Bidirectional: the {which} layer {name_of(layer)} is not a recurrent layer; Bidirectional runs one over "
            "the sequence and one over it reversed: pass an RNN, LSTM or GRU (or a layer of yours with their "
            "interface: return_sequences, initial_state)"
        )
    if getattr(layer, "initial_state", "zeros") != "zeros":
        raise ValueError(
            f"Bidirectional: the {which} layer {name_of(layer)} has initial_state={layer.initial_state!r}; "
            "Bidirectional takes x (or (x, lengths)), so both directions start from zeros (initial_state='zeros')"
        )


def _reverse_time(a, lengths=None):
    """(B, T, ...) with each sequence's real steps reversed: step t reads step L - 1 - t for t < L, and 0 after.

    Without lengths L = T for every sequence: a plain flip of the time axis.
    With lengths (a length above T counts as T and one below 0 as 0: under
    ``jax.jit`` the recurrent layers make such a sequence NaN) the padded steps read 0, so
    the backward layer sees a padded batch as a user would build it, and
    whatever the padding held reaches nothing. As a matrix on the time axis
    either map is symmetric (it pairs t with L - 1 - t, both < L), so it is
    its own adjoint: the backward reverses dL/dy and dL/dx with it too.
    """
    if lengths is None:
        return jnp.flip(a, axis=1)
    T = a.shape[1]
    t = jnp.arange(T)[None, :]
    L = jnp.clip(lengths, 0, T)[:, None]
    feature_axes = (1,) * (a.ndim - 2)
    real = (t < L).reshape(*L.shape[:1], T, *feature_axes)  # (B, T, 1...)
    source = jnp.where(t < L, L - 1 - t, t).reshape(real.shape)  # the step that step t reads
    return jnp.where(real, jnp.take_along_axis(a, source, axis=1), 0)


@dataclass(frozen=True)
class Bidirectional(Layer):
    """y = [f(x), reverse(g(reverse(x)))]: ``layer`` f reads x forward, a copy g reads it backward.

    .. math::
        \\overrightarrow{h}_t = f(x_1..x_t),\\qquad \\overleftarrow{h}_t = g(x_T..x_t),\\qquad
        y_t = [\\overrightarrow{h}_t, \\overleftarrow{h}_t]

    so every output step sees the whole sequence. With
    ``return_sequences=False`` the layers give their last states, and y is
    [f's h_T, g's state after reading x_T .. x_1] (Keras' convention).

    Variable lengths: when the layers have ``variable_length=True`` the
    input is ``(x, lengths)`` and g reads each sequence's real steps
    backward, x_(L-1) .. x_0, not the padding first: "reverse" above is
    then step t <-> step L - 1 - t for t < L, with 0 at the padded steps
    (``_reverse_time``), and both directions output 0 there. The last-step
    output is [f's state after x_(L-1), g's state after x_0], as PyTorch's
    packed sequences give it.

    Attributes:
      layer: a recurrent layer (RNN, LSTM, GRU, or your own with the same
        interface) with ``initial_state="zeros"``; with ``variable_length=True``
        (both layers alike) the input is ``(x, lengths)``.
      backward_layer: the layer that reads the reversed sequence; default: a
        copy of ``layer`` (same hyperparameters, its own params).
      variable_length: whether the input is ``(x, lengths)``; default (None):
        the layers' own ``variable_length`` (kept when ``replace_children``
        puts in layers that do not declare it).

    Shapes: x (B, T, D) -> y (B, T, H_f + H_b), or (B, H_f + H_b) for
    last-step layers. Params: ``{"forward": f's params, "backward": g's}``.
    As a container its children are named "forward" and "backward"; the
    backward child's per-step rows (dL/dh[t]) count ITS steps: its t = 0 is
    x's last step T - 1 (with variable lengths, each sequence's last real
    step L - 1).
    """

    layer: object
    backward_layer: object = None
    variable_length: bool | None = None

    def __post_init__(self):
        if self.backward_layer is None:
            object.__setattr__(self, "backward_layer", self.layer)
        _check_recurrent("forward", self.layer)
        _check_recurrent("backward", self.backward_layer)
        seqs = [getattr(layer, "return_sequences", None) for layer in (self.layer, self.backward_layer)]
        if None not in seqs and seqs[0] != seqs[1]:
            raise ValueError(f"Bidirectional: both layers must agree on return_sequences, got {seqs[0]} and {seqs[1]}")
        if self.variable_length is not None and not isinstance(self.variable_length, bool):
            raise ValueError(f"Bidirectional: variable_length must be a bool or None, got {self.variable_length!r}")
        declared = {getattr(layer, "variable_length", None) for layer in (self.layer, self.backward_layer)} - {None}
        if len(declared) > 1:
            raise ValueError("Bidirectional: both layers must agree on variable_length, got "
                             f"{self.layer.variable_length} and {self.backward_layer.variable_length}")
        if self.variable_length is None:
            object.__setattr__(self, "variable_length", declared.pop() if declared else False)
        elif declared and self.variable_length not in declared:
            raise ValueError(f"Bidirectional: variable_length={self.variable_length!r}, but the layers have "
                             f"variable_length={declared.pop()}")

    def check_input(self, params, x):
        """Raise a ValueError if concrete lengths lie outside [0, T] (the forward layer's check, before any jit)."""
        if self.variable_length and hasattr(self.layer, "check_input"):
            self.layer.check_input(self.split_params(params)[0], x)

    def _split_input(self, x):
        """(x, lengths) from the input: lengths None for layers without variable lengths."""
        if not self.variable_length:
            if isinstance(x, (tuple, list)):
                raise TypeError(
                    "Bidirectional: got a tuple input, but the layers have variable_length=False; pass x of shape "
                    "(B, T, D), or give both layers variable_length=True for (x, lengths)"
                )
            return x, None
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise TypeError(
                f"Bidirectional: with variable_length=True layers expected the input as a tuple (x, lengths), "
                f"got {describe(x)}"
            )
        return tuple(x)

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
        return Bidirectional(*layers, variable_length=self.variable_length)

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
        """x: (B, T, D), or (x, lengths) -> y: (B, T, H_f + H_b) or (B, H_f + H_b).

        Cache: both layers' caches, H_f (where dy splits), the lengths (None without) and y's shape and dtype.
        """
        x, lengths = self._split_input(x)
        check_array(self, x, ndim=3)
        pf, pb = self.split_params(params)
        pack = (lambda a: a) if lengths is None else (lambda a: (a, lengths))
        yf, cf = self.layer.forward(pf, pack(x))  # checks the lengths (dtype, shape, range) before they are used
        yb, cb = self.backward_layer.forward(pb, pack(_reverse_time(x, lengths)))
        if yb.ndim == 3:
            yb = _reverse_time(yb, lengths)  # back to x's time order: y_t = [h_t forward, h_t backward]
        y = jnp.concatenate([yf, yb], axis=-1)
        return y, (cf, cb, yf.shape[-1], lengths, spec(y))

    def backward(self, params, cache, dy):
        """Split dy, reverse the backward half's time, run both layers' BPTT, reverse and add their dx.

        .. math::
            dy = [dy^f, dy^b],\\qquad
            dx = \\mathrm{BPTT}_f(dy^f) + \\mathrm{rev}(\\mathrm{BPTT}_g(\\mathrm{rev}(dy^b)))

        x feeds both directions, so dx is the sum of the two input
        gradients (the fork's rule); reversing time is a permutation, whose
        adjoint is the same reversal (per sequence, over its real steps, with
        variable lengths). The lengths get no gradient: dx is ``(dx, None)``.
        """
        cf, cb, split, lengths, y = cache
        check_dy(self, dy, y.shape, y.dtype)
        pf, pb = self.split_params(params)
        dyf, dyb = dy[..., :split], dy[..., split:]
        if dyb.ndim == 3:
            dyb = _reverse_time(dyb, lengths)
        gf, dxf = self.layer.backward(pf, cf, dyf)
        gb, dxb = self.backward_layer.backward(pb, cb, dyb)
        grads = {"forward": gf, "backward": gb}
        if lengths is None:
            return grads, dxf + _reverse_time(dxb)
        return grads, (dxf[0] + _reverse_time(dxb[0], lengths), None)

    def kink_pattern(self, cache):
        cf, cb = cache[:2]
        return tuple(layer.kink_pattern(c) if getattr(layer, "kink_pattern", None) else None
                     for layer, c in ((self.layer, cf), (self.backward_layer, cb)))
