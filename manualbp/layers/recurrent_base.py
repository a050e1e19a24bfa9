"""What every recurrent layer shares (RNN, LSTM, GRU): the interface, input unpacking and checks, output selection.

Recurrent layers with hand-written backprop through time (BPTT): what they share; the RNN is ``rnn``, the
LSTM ``lstm``, the GRU ``gru``.

Interface (every recurrent layer): input ``x`` of shape (B, T, D), batch-first; output
every hidden state (B, T, H) (``return_sequences=True``) or only the last
(B, H). The initial state is zeros (``initial_state="zeros"``) or given
(``initial_state="given"``): then the input is ``(x, h0)`` for the RNN and
the GRU and ``(x, h0, c0)`` for the LSTM, each state of shape (B, H), and dx
is returned as the matching tuple ``(dx, dh0)`` / ``(dx, dh0, dc0)``.

Variable-length sequences (``variable_length=True``): the input is
``(x, lengths, *initial states)``, ``lengths`` an integer array (B,) with
0 <= lengths[b] <= T. Steps t >= lengths[b] are padding: they leave the
state unchanged (h_t = h_(t-1), c_t = c_(t-1)) and output zeros, so the
last output is the state after the last real step. Backward matches: at a
padded step dL/dz_t = 0 and the carry passes through unchanged
(dL/dh_(t-1) = dL/dh_t, dL/dc_(t-1) = dL/dc_t); the lengths get no
gradient (None in dx's tuple). A length outside [0, T] raises where the
lengths are concrete (``check_input`` runs before ``value_and_grad``'s and
``compare``'s jit); under the user's own ``jax.jit`` it makes its sequence
NaN (loss and gradients NaN, as an invalid label does).

Inside, sequences are time-major (T, B, .) so ``lax.scan`` walks axis 0 (``time_major``); the input
projection x_t Wx is hoisted out of the forward scan as one matmul over all T*B rows (``as_rows``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.layers.base import (
    Layer,
    check_array,
    check_dtype_match,
    check_dy,
    check_input_width,
    check_param,
    check_positive_int,
    check_values,
    describe,
    is_concrete,
)

_INITIAL_STATES = ("zeros", "given")


def time_major(a):
    """(B, T, ...) <-> (T, B, ...)."""
    return jnp.swapaxes(a, 0, 1)


def as_rows(a):
    """(T, B, K) -> (T*B, K): every step of every sequence is one row of a matmul."""
    return a.reshape(-1, a.shape[-1])


def bias_row(b, ndim):
    """b of shape (K,) viewed with ``ndim`` axes, so adding it broadcasts explicitly."""
    return b.reshape((1,) * (ndim - 1) + b.shape)


class RecurrentBase(Layer):
    """What RNN, LSTM and GRU share: hyperparameter checks, input unpacking, output selection."""

    n_states = 1  # RNN: h; LSTM: h and c
    n_gates = 1  # blocks of H columns in Wx, Wh and b: RNN 1, LSTM 4 ([i | f | g | o]), GRU 3 ([r | z | n])
    variable_length = False  # a layer that supports lengths declares it as a dataclass field

    def _gate_weights(self, key, D: int, dtype) -> dict:
        """Wx (D, G H) LeCun-normal (std 1/sqrt(D)) and Wh (H, G H), one orthogonal (H, H) block per gate; b zeros.

        A single gate (the RNN) draws its block from ``kh`` itself, so its weights are those of one
        LeCun-normal draw and one orthogonal draw from ``split(key)``.
        """
        H, G = self.hidden, self.n_gates
        kx, kh = jax.random.split(key)
        orth = jax.nn.initializers.orthogonal()
        gate_keys = [kh] if G == 1 else jax.random.split(kh, G)
        return {
            "Wx": jax.random.normal(kx, (D, G * H), dtype) / jnp.sqrt(D).astype(dtype),
            "Wh": jnp.concatenate([orth(k, (H, H), dtype) for k in gate_keys], axis=1),
            "b": jnp.zeros((G * H,), dtype),
        }

    def _check_hyperparameters(self):
        check_positive_int(self.name, "hidden", self.hidden)
        for flag in ("return_sequences", "variable_length"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{self.name}: {flag} must be a bool, got {getattr(self, flag)!r}")
        if self.initial_state not in _INITIAL_STATES:
            raise ValueError(
                f"{self.name}: initial_state must be one of {_INITIAL_STATES}, got {self.initial_state!r}"
            )

    @property
    def _state_names(self):
        return ("h0", "c0")[: self.n_states]

    @property
    def _input_names(self):
        """The members of a tuple input, or () when the input is x alone."""
        if self.initial_state == "zeros" and not self.variable_length:
            return ()
        return ("x", *(("lengths",) if self.variable_length else ()),
                *(self._state_names if self.initial_state == "given" else ()))

    def _input_form(self):
        """How the options shape the input, for messages: "initial_state='given'", "variable_length=True" or both."""
        options = ["initial_state='given'"] if self.initial_state == "given" else []
        return " and ".join(options + (["variable_length=True"] if self.variable_length else []))

    def _sequence_shape(self, input_shape):
        """(T, D) from ``init``'s input shape: (T, D), or a tuple with (T, D) first (see ``_input_names``)."""
        names = self._input_names
        if names:
            if not isinstance(input_shape, (tuple, list)) or len(input_shape) != len(names):
                shapes = {"x": "(T, D)", "lengths": "()", "h0": "(H,)", "c0": "(H,)"}
                raise ValueError(
                    f"{self.name}: with {self._input_form()} the input shape is "
                    f"({', '.join(shapes[n] for n in names)}), got {input_shape!r}"
                )
            input_shape = input_shape[0]
        if len(input_shape) != 2 or not all(isinstance(n, int) for n in input_shape):
            raise ValueError(f"{self.name}: expected an input shape (T, D) (batch excluded), got {input_shape!r}")
        if input_shape[0] == 0:
            raise ValueError(f"{self.name}: expected at least one time step, got input shape {tuple(input_shape)}")
        return tuple(input_shape)

    def output_shape(self, input_shape):
        T, _ = self._sequence_shape(input_shape)
        return (T, self.hidden) if self.return_sequences else (self.hidden,)

    def _unpack_with_mask(self, params, x):
        """(x, states, mask) from the input, after checking rank, T, D, lengths and dtypes against the params.

        Returns x of shape (B, T, D), a tuple of ``n_states`` arrays of shape (B, H)
        (zeros unless the initial state is given) and, with ``variable_length``,
        the time-major mask (T, B, 1) of real steps (t < lengths[b]), else None.
        """
        Wx = params["Wx"]
        names = self._input_names
        if names:
            if not isinstance(x, (tuple, list)) or len(x) != len(names):
                raise TypeError(
                    f"{self.name}: with {self._input_form()} expected the input as a tuple "
                    f"({', '.join(names)}), got {describe(x)}"
                )
            parts = dict(zip(names, x))
            x, lengths = parts["x"], parts.get("lengths")
            states = tuple(parts[n] for n in self._state_names) if self.initial_state == "given" else None
        elif isinstance(x, (tuple, list)):
            raise TypeError(
                f"{self.name}: got a tuple input but initial_state='zeros' and variable_length=False; pass x of "
                "shape (B, T, D), or use initial_state='given' for (x, initial state), variable_length=True for "
                "(x, lengths)"
            )
        else:
            states = lengths = None
        check_array(self, x, ndim=3)
        B, T, D = x.shape
        if T == 0:
            raise ValueError(f"{self.name}: expected at least one time step, got x of shape {tuple(x.shape)}")
        G = self.n_gates * self.hidden
        check_input_width(self, params, "Wx", x, (None, G), says="x of shape (B, T, {})")
        g = "" if self.n_gates == 1 else f"{self.n_gates} "
        for key, shape, why in (("Wx", (D, G), f"(D, {g}hidden)"), ("Wh", (self.hidden, G), f"(hidden, {g}hidden)"),
                                ("b", (G,), f"({g}hidden,)")):
            check_param(self, params, key, shape, like=x, why=why)
        x, mask = (x, None) if lengths is None else self._mask(lengths, x)
        if states is None:
            return x, tuple(jnp.zeros((B, self.hidden), x.dtype) for _ in range(self.n_states)), mask
        for name, s in zip(self._state_names, states, strict=True):
            check_array(self, s, what=name, ndim=2)
            if tuple(s.shape) != (B, self.hidden):
                raise ValueError(
                    f"{self.name}: expected {name} of shape ({B}, {self.hidden}) (batch, hidden), got {tuple(s.shape)}"
                )
            check_dtype_match(self, s, Wx, what=name, wname="Wx")
        return x, states, mask

    def check_input(self, params, x):
        """Raise a ValueError if concrete lengths lie outside [0, T] (what ``forward`` raises, before any jit)."""
        del params
        if (self.variable_length and isinstance(x, (tuple, list)) and len(x) >= 2 and getattr(x[0], "ndim", 0) == 3
                and is_concrete(x[1])):
            self._check_lengths(x[1], *x[0].shape[:2])

    def _mask(self, lengths, x):
        """(x, mask): the time-major mask (T, B, 1) of real steps, t < lengths[b], after checking ``lengths``.

        Concrete lengths outside [0, T] raise. Traced ones cannot (under ``jax.jit``): a sequence with
        such a length gets x = NaN at every step, all of them real, so its outputs, the loss and every
        gradient are NaN, never a plausible number (``base.check_values``).
        """
        B, T = x.shape[:2]
        bad = self._check_lengths(lengths, B, T)
        mask = (jnp.arange(T)[:, None] < lengths[None, :])[:, :, None]
        if bad is None:
            return x, mask
        return jnp.where(bad[:, None, None], jnp.asarray(jnp.nan, x.dtype), x), mask | bad[None, :, None]

    def _check_lengths(self, lengths, B, T):
        """Raise unless ``lengths`` is an integer array (B,) with values in [0, T]; traced: the mask of bad entries."""
        if not hasattr(lengths, "shape") or not hasattr(lengths, "dtype"):
            raise TypeError(f"{self.name}: expected lengths to be an integer array of shape ({B},), "
                            f"got {type(lengths).__name__}")
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"{self.name}: expected lengths of an integer dtype (steps per sequence), got {describe(lengths)}")
        if tuple(lengths.shape) != (B,):
            raise ValueError(f"{self.name}: expected lengths of shape ({B},) (one per sequence), got {tuple(lengths.shape)}")
        return check_values(self.name, f"lengths must lie in [0, {T}] (T = {T} steps)", lengths,
                            lambda v: (v < 0) | (v > T))

    def _output(self, hs, mask=None):
        """hs (T, B, H) -> y: (B, T, H) (zeros at padded steps) or the last step (B, H)."""
        if not self.return_sequences:
            return hs[-1]  # the state after the last real step: padded steps carry it unchanged
        return time_major(hs if mask is None else jnp.where(mask, hs, 0))

    def _upstream(self, states, dy, mask=None):
        """Split dL/dy into the per-step part (T, B, H) (None for last-only) and the seed of the carry (B, H).

        ``states`` is any cached (T, B, H) array of the layer (it gives the shapes).
        A padded step outputs a constant 0, so its dL/dy reaches nothing: zeroed.
        """
        T, B, H = states.shape
        check_dy(self, dy, (B, T, H) if self.return_sequences else (B, H), states.dtype)
        if self.return_sequences:
            dys = time_major(dy)
            return (dys if mask is None else jnp.where(mask, dys, 0)), jnp.zeros((B, H), states.dtype)
        return None, dy  # only h_T reaches the output: dL/dh_T = dy seeds the carry

    def _dx(self, dx, dstates):
        """dx in the input's form: x's gradient, None for the lengths (integers), then the initial states'."""
        if not self._input_names:
            return dx
        return (dx, *((None,) if self.variable_length else ()), *(dstates if self.initial_state == "given" else ()))

    def backward(self, params, cache, dy):
        """BPTT as in ``backward_trace``, without the per-step gradients."""
        dparams, dx, _ = self._bptt(params, cache, dy)
        return dparams, dx

    def backward_trace(self, params, cache, dy):
        """BPTT, plus the per-step gradients {"h": dL/dh_t, ...} of shape (B, T, H) each.

        dL/dh_t is the TOTAL gradient at step t: through the output at t and
        through h_(t+1) (what the reference's zero tap on h_t measures).
        """
        dparams, dx, steps = self._bptt(params, cache, dy)
        return dparams, dx, {k: time_major(v) for k, v in steps.items()}
