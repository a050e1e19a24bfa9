"""Recurrent layers with hand-written backprop through time (BPTT): what they share, and the RNN (LSTM: ``lstm``).

Interface (every recurrent layer): input ``x`` of shape (B, T, D), batch-first; output
every hidden state (B, T, H) (``return_sequences=True``) or only the last
(B, H). The initial state is zeros (``initial_state="zeros"``) or given
(``initial_state="given"``): then the input is ``(x, h0)`` for the RNN and
``(x, h0, c0)`` for the LSTM, each state of shape (B, H), and dx is returned
as the matching tuple ``(dx, dh0)`` / ``(dx, dh0, dc0)``.

Inside, sequences are time-major (T, B, .) so ``lax.scan`` walks axis 0.
The input projection x_t Wx is hoisted out of the forward scan as a single
matmul over all T*B rows. The RNN also hoists dWx, dWh, db and dx out of
its reverse scan (single matmuls over all T*B rows), which carries only
dL/dh and does one (B, H) x (H, H) matmul per step. The LSTM's reverse scan
carries dL/dh and dL/dc and accumulates dWx, dWh, db (and emits dx_t) step
by step instead: a (T, B, 4H) stack of delta z on top of its cache would
double the step's temporary memory (see ``LSTM._bptt``).

Shared weights: the unrolled network uses Wx, Wh and b at every step, so
their gradient is the SUM over time steps of the per-step gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.layers.activations import Activation, Tanh
from manualbp.layers.base import Layer, check_array, check_dtype_match, check_param, check_params, describe

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
    """What RNN and LSTM share: hyperparameter checks, input unpacking, output selection."""

    n_states = 1  # RNN: h; LSTM: h and c
    n_gates = 1  # blocks of H columns in Wx, Wh and b: RNN 1, LSTM 4 ([i | f | g | o])

    def _check_hyperparameters(self):
        if not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or self.hidden <= 0:
            raise ValueError(f"{self.name}: hidden must be a positive int, got {self.hidden!r}")
        if not isinstance(self.return_sequences, bool):
            raise ValueError(f"{self.name}: return_sequences must be a bool, got {self.return_sequences!r}")
        if self.initial_state not in _INITIAL_STATES:
            raise ValueError(
                f"{self.name}: initial_state must be one of {_INITIAL_STATES}, got {self.initial_state!r}"
            )

    @property
    def _state_names(self):
        return ("h0", "c0")[: self.n_states]

    def _sequence_shape(self, input_shape):
        """(T, D) from ``init``'s input shape: (T, D), or ((T, D), (H,), ...) with a given initial state."""
        if self.initial_state == "given":
            if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 1 + self.n_states:
                raise ValueError(
                    f"{self.name}: with initial_state='given' the input shape is ((T, D), "
                    f"{', '.join(['(H,)'] * self.n_states)}), got {input_shape!r}"
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

    def _unpack(self, params, x):
        """(x, states) from the input, after checking rank, T, D and dtypes against the params.

        Returns x of shape (B, T, D) and a tuple of ``n_states`` arrays of shape (B, H)
        (zeros unless the initial state is given).
        """
        Wx = params["Wx"]
        if self.initial_state == "given":
            n = 1 + self.n_states
            if not isinstance(x, (tuple, list)) or len(x) != n:
                raise TypeError(
                    f"{self.name}: with initial_state='given' expected the input as a tuple "
                    f"(x, {', '.join(self._state_names)}), got {describe(x)}"
                )
            x, states = x[0], tuple(x[1:])
        elif isinstance(x, (tuple, list)):
            raise TypeError(
                f"{self.name}: got a tuple input but initial_state='zeros'; pass x of shape (B, T, D), "
                "or use initial_state='given' for (x, initial state)"
            )
        else:
            states = None
        check_array(self, x, ndim=3)
        B, T, D = x.shape
        if T == 0:
            raise ValueError(f"{self.name}: expected at least one time step, got x of shape {tuple(x.shape)}")
        G = self.n_gates * self.hidden
        if len(getattr(Wx, "shape", ())) == 2 and Wx.shape[1] == G and D != Wx.shape[0]:
            raise ValueError(
                f"{self.name}: expected x of shape (B, T, {Wx.shape[0]}) (Wx has shape {tuple(Wx.shape)}), "
                f"got {tuple(x.shape)}"
            )
        g = "" if self.n_gates == 1 else f"{self.n_gates} "
        for key, shape, why in (("Wx", (D, G), f"(D, {g}hidden)"), ("Wh", (self.hidden, G), f"(hidden, {g}hidden)"),
                                ("b", (G,), f"({g}hidden,)")):
            check_param(self, params, key, shape, like=x, why=why)
        if states is None:
            return x, tuple(jnp.zeros((B, self.hidden), x.dtype) for _ in range(self.n_states))
        for name, s in zip(self._state_names, states, strict=True):
            check_array(self, s, what=name, ndim=2)
            if tuple(s.shape) != (B, self.hidden):
                raise ValueError(
                    f"{self.name}: expected {name} of shape ({B}, {self.hidden}) (batch, hidden), got {tuple(s.shape)}"
                )
            check_dtype_match(self, s, Wx, what=name, wname="Wx")
        return x, states

    def _output(self, hs):
        """hs (T, B, H) -> y: (B, T, H) or the last step (B, H)."""
        return time_major(hs) if self.return_sequences else hs[-1]

    def _upstream(self, states, dy):
        """Split dL/dy into the per-step part (T, B, H) (None for last-only) and the seed of the carry (B, H).

        ``states`` is any cached (T, B, H) array of the layer (it gives the shapes).
        """
        T, B, H = states.shape
        expected = (B, T, H) if self.return_sequences else (B, H)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self.name}: expected dy of shape {expected} (the shape of y), got {tuple(dy.shape)}")
        if self.return_sequences:
            return time_major(dy), jnp.zeros((B, H), states.dtype)
        return None, dy  # only h_T reaches the output: dL/dh_T = dy seeds the carry

    def _dx(self, dx, dstates):
        return (dx, *dstates) if self.initial_state == "given" else dx

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


@dataclass(frozen=True)
class RNN(RecurrentBase):
    """Elman RNN: h_t = f(x_t Wx + h_(t-1) Wh + b), f tanh by default.

    Attributes:
      hidden: H, the width of the hidden state.
      activation: f, any activation of ``manualbp.layers.activations`` (an instance,
        e.g. ``ReLU()``); its own forward/backward are used at every step.
      return_sequences: output all hidden states (B, T, H), or the last (B, H).
      initial_state: "zeros", or "given" (input ``(x, h0)``, dx ``(dx, dh0)``).

    Params: ``Wx`` (D, H) LeCun-normal (std 1/sqrt(D)), ``Wh`` (H, H)
    orthogonal, ``b`` (H,) zeros.
    """

    hidden: int
    activation: Activation = Tanh()
    return_sequences: bool = True
    initial_state: str = "zeros"

    def __post_init__(self):
        self._check_hyperparameters()
        if not isinstance(self.activation, Activation):
            raise TypeError(
                f"RNN: activation must be an activation instance from manualbp.layers.activations (e.g. Tanh()), "
                f"got {self.activation!r}"
            )

    def init(self, key, input_shape, dtype=jnp.float32):
        _, D = self._sequence_shape(input_shape)
        kx, kh = jax.random.split(key)
        params = {
            "Wx": jax.random.normal(kx, (D, self.hidden), dtype) / jnp.sqrt(D).astype(dtype),
            "Wh": jax.nn.initializers.orthogonal()(kh, (self.hidden, self.hidden), dtype),
            "b": jnp.zeros((self.hidden,), dtype),
        }
        return params, self.output_shape(input_shape)

    def forward(self, params, x):
        """x: (B, T, D) or (x, h0) -> y: (B, T, H) or (B, H).

        Cache: x and h0, the hidden states hs (T, B, H) and the activation's
        per-step cache (None when it is h itself, as for tanh and sigmoid).
        """
        check_params(self, params, ("Wx", "Wh", "b"))
        x, (h0,) = self._unpack(params, x)
        Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
        xs = time_major(x)  # (T, B, D)
        xw = (as_rows(xs) @ Wx).reshape(*xs.shape[:2], self.hidden)  # hoisted: x_t Wx for all t, one matmul
        b = bias_row(b, 2)

        def step(h_prev, xw_t):
            h, act = self.activation.forward({}, xw_t + h_prev @ Wh + b)  # z_t = x_t Wx + h_(t-1) Wh + b
            return h, (h, None if act is h else act)

        _, (hs, act) = lax.scan(step, h0, xw)
        return self._output(hs), (xs, h0, hs, act)

    def _bptt(self, params, cache, dy):
        """Backprop through time, with dL/dh_t carried from step t+1 to step t.

        .. math::
            \\delta h_t = \\partial L/\\partial y_t + \\delta z_{t+1} W_h^T  \\quad (total dL/dh_t)
            \\delta z_t = \\delta h_t \\odot f'(z_t)
            dW_x = \\sum_t x_t^T \\delta z_t,\\ dW_h = \\sum_t h_{t-1}^T \\delta z_t,\\ db = \\sum_t \\sum_n \\delta z_t
            dx_t = \\delta z_t W_x^T,\\ dh_0 = \\delta z_1 W_h^T

        The reverse scan carries only delta z_t Wh^T (B, H); the sums over t
        are single matmuls over all T*B rows after it.
        """
        xs, h0, hs, act = cache
        Wx, Wh = params["Wx"], params["Wh"]
        act = hs if act is None else act
        dys, carry = self._upstream(hs, dy)

        def step(dh_next, inputs):
            dy_t, act_t = inputs
            dh = dh_next if dy_t is None else dh_next + dy_t  # total dL/dh_t
            _, dz = self.activation.backward({}, act_t, dh)  # dL/dz_t = dL/dh_t * f'(z_t)
            return dz @ Wh.T, (dz, dh)

        dh0, (dz, dh) = lax.scan(step, carry, (dys, act), reverse=True)
        h_prev = jnp.concatenate([h0[None], hs[:-1]])  # (T, B, H): h_(t-1) for every t
        dz2 = as_rows(dz)  # (T*B, H)
        dparams = {"Wx": as_rows(xs).T @ dz2, "Wh": as_rows(h_prev).T @ dz2, "b": jnp.sum(dz2, axis=0)}
        dx = time_major((dz2 @ Wx.T).reshape(*xs.shape))  # (B, T, D)
        return dparams, self._dx(dx, (dh0,)), {"h": dh}

    def kink_pattern(self, cache):
        """The activation's discrete choices at every step (e.g. ReLU signs), or None if it is smooth."""
        if not hasattr(self.activation, "kink_pattern"):
            return None
        _, _, hs, act = cache
        return self.activation.kink_pattern(hs if act is None else act)
