"""Recurrent layers with hand-written backprop through time (BPTT): RNN and LSTM.

Interface (both layers): input ``x`` of shape (B, T, D), batch-first; output
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

Shared weights (seed 002): Wx, Wh and b are used at every step, so their
gradient is the SUM over time steps of the per-step gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.activations import Tanh, _Activation
from manualbp.layer import Layer, check_array, check_dtype_match, check_params, describe

_INITIAL_STATES = ("zeros", "given")


def _time_major(a):
    """(B, T, ...) <-> (T, B, ...)."""
    return jnp.swapaxes(a, 0, 1)


def _rows(a):
    """(T, B, K) -> (T*B, K): every step of every sequence is one row of a matmul."""
    return a.reshape(-1, a.shape[-1])


def _bias(b, ndim):
    """b of shape (K,) viewed with ``ndim`` axes, so adding it broadcasts explicitly."""
    return b.reshape((1,) * (ndim - 1) + b.shape)


class _Recurrent(Layer):
    """What RNN and LSTM share: hyperparameter checks, input unpacking, output selection."""

    n_states = 1  # RNN: h; LSTM: h and c

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
        if D != Wx.shape[0]:
            raise ValueError(
                f"{self.name}: expected x of shape (B, T, {Wx.shape[0]}) (Wx has shape {tuple(Wx.shape)}), "
                f"got {tuple(x.shape)}"
            )
        check_dtype_match(self, x, Wx, wname="Wx")
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
        return _time_major(hs) if self.return_sequences else hs[-1]

    def _upstream(self, states, dy):
        """Split dL/dy into the per-step part (T, B, H) (None for last-only) and the seed of the carry (B, H).

        ``states`` is any cached (T, B, H) array of the layer (it gives the shapes).
        """
        T, B, H = states.shape
        expected = (B, T, H) if self.return_sequences else (B, H)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self.name}: expected dy of shape {expected} (the shape of y), got {tuple(dy.shape)}")
        if self.return_sequences:
            return _time_major(dy), jnp.zeros((B, H), states.dtype)
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
        return dparams, dx, {k: _time_major(v) for k, v in steps.items()}


@dataclass(frozen=True)
class RNN(_Recurrent):
    """Elman RNN: h_t = f(x_t Wx + h_(t-1) Wh + b), f tanh by default.

    Attributes:
      hidden: H, the width of the hidden state.
      activation: f, any activation of ``manualbp.activations`` (an instance,
        e.g. ``ReLU()``); its own forward/backward are used at every step.
      return_sequences: output all hidden states (B, T, H), or the last (B, H).
      initial_state: "zeros", or "given" (input ``(x, h0)``, dx ``(dx, dh0)``).

    Params: ``Wx`` (D, H) LeCun-normal (std 1/sqrt(D)), ``Wh`` (H, H)
    orthogonal, ``b`` (H,) zeros.
    """

    hidden: int
    activation: _Activation = Tanh()
    return_sequences: bool = True
    initial_state: str = "zeros"

    def __post_init__(self):
        self._check_hyperparameters()
        if not isinstance(self.activation, _Activation):
            raise TypeError(
                f"RNN: activation must be an activation instance from manualbp.activations (e.g. Tanh()), "
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
        xs = _time_major(x)  # (T, B, D)
        xw = (_rows(xs) @ Wx).reshape(*xs.shape[:2], self.hidden)  # hoisted: x_t Wx for all t, one matmul
        b = _bias(b, 2)

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
        dz2 = _rows(dz)  # (T*B, H)
        dparams = {"Wx": _rows(xs).T @ dz2, "Wh": _rows(h_prev).T @ dz2, "b": jnp.sum(dz2, axis=0)}
        dx = _time_major((dz2 @ Wx.T).reshape(*xs.shape))  # (B, T, D)
        return dparams, self._dx(dx, (dh0,)), {"h": dh}

    def kink_pattern(self, cache):
        """The activation's discrete choices at every step (e.g. ReLU signs), or None if it is smooth."""
        if not hasattr(self.activation, "kink_pattern"):
            return None
        _, _, hs, act = cache
        return self.activation.kink_pattern(hs if act is None else act)


@dataclass(frozen=True)
class LSTM(_Recurrent):
    """Long short-term memory, gates i, f, g, o (Hochreiter & Schmidhuber 1997; forget gate of Gers et al.).

    .. math::
        [z^i, z^f, z^g, z^o] = x_t W_x + h_{t-1} W_h + b
        i = \\sigma(z^i),\\ f = \\sigma(z^f),\\ g = \\tanh(z^g),\\ o = \\sigma(z^o)
        c_t = f \\odot c_{t-1} + i \\odot g
        h_t = o \\odot \\tanh(c_t)

    The cell state's additive path c_(t-1) -> c_t (gain f, no matrix) is why
    the LSTM keeps its gradient over many steps where a plain RNN loses it.

    Attributes:
      hidden: H, the width of h and c.
      return_sequences: output all hidden states h (B, T, H), or the last (B, H).
      initial_state: "zeros", or "given" (input ``(x, h0, c0)``, dx ``(dx, dh0, dc0)``).

    Params: ``Wx`` (D, 4H) LeCun-normal, ``Wh`` (H, 4H) orthogonal per gate,
    ``b`` (4H,) zeros except the forget gate's 1 (Jozefowicz et al. 2015).
    Gate blocks are laid out [i | f | g | o] along the last axis.
    """

    hidden: int
    return_sequences: bool = True
    initial_state: str = "zeros"

    n_states = 2

    def __post_init__(self):
        self._check_hyperparameters()

    def init(self, key, input_shape, dtype=jnp.float32):
        _, D = self._sequence_shape(input_shape)
        H = self.hidden
        kx, kh = jax.random.split(key)
        orth = jax.nn.initializers.orthogonal()
        params = {
            "Wx": jax.random.normal(kx, (D, 4 * H), dtype) / jnp.sqrt(D).astype(dtype),
            "Wh": jnp.concatenate([orth(k, (H, H), dtype) for k in jax.random.split(kh, 4)], axis=1),
            "b": jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(1),
        }
        return params, self.output_shape(input_shape)

    def forward(self, params, x):
        """x: (B, T, D) or (x, h0, c0) -> y: (B, T, H) or (B, H).

        Cache, per step (T, B, .): [x_t, h_(t-1)] (D + H, side by side: the
        rows of both weight gradients at step t), the gates [i, f, g, o] (4H)
        and the cell state c_(t-1) the step started from; c_t and tanh(c_t) are
        recomputed by the backward pass from these (cheaper than storing them).

        The gates are written over the buffer of the hoisted x_t Wx (step t reads
        row t, then overwrites it), so the forward holds one (T, B, 4H) array,
        not two: the whole step's temporaries stay small enough for the
        allocator to reuse them instead of mapping fresh pages every call.
        """
        check_params(self, params, ("Wx", "Wh", "b"))
        x, (h0, c0) = self._unpack(params, x)
        Wx, Wh, b = params["Wx"], params["Wh"], _bias(params["b"], 2)
        H = self.hidden
        xs = _time_major(x)  # (T, B, D)
        T, B, D = xs.shape
        xw = (_rows(xs) @ Wx).reshape(T, B, 4 * H)  # hoisted: x_t Wx for all t, one matmul
        # sigma(z) = (tanh(z/2) + 1) / 2, so all four gates are one tanh over (B, 4H): a * tanh(a z) + s
        a = jnp.repeat(jnp.asarray([0.5, 0.5, 1.0, 0.5], x.dtype), H)[None]  # (1, 4H)
        s = jnp.repeat(jnp.asarray([0.5, 0.5, 0.0, 0.5], x.dtype), H)[None]

        def step(t, state):
            h_prev, c_prev, gates, xh, cs = state
            z = lax.dynamic_index_in_dim(gates, t, keepdims=False) + h_prev @ Wh + b  # x_t Wx + h_(t-1) Wh + b
            act = a * jnp.tanh(a * z) + s  # [i, f, g, o] = [sigma(z^i), sigma(z^f), tanh(z^g), sigma(z^o)]
            i, f, g, o = jnp.split(act, 4, axis=1)
            c = f * c_prev + i * g
            return (o * jnp.tanh(c), c, lax.dynamic_update_index_in_dim(gates, act, t, 0),
                    lax.dynamic_update_slice(xh, h_prev[None], (t, 0, D)), lax.dynamic_update_index_in_dim(cs, c_prev, t, 0))

        states = jnp.zeros((T, B, H), x.dtype)
        xh = jnp.concatenate([xs, states], axis=2)  # (T, B, D + H): [x_t, h_(t-1)], the rows of both dW at step t
        h_last, _, gates, xh, c_prev = lax.fori_loop(0, T, step, (h0, c0, xw, xh, states))
        h_prev = xh[:, :, D:]
        if self.return_sequences:
            y = _time_major(jnp.concatenate([h_prev[1:], h_last[None]]))  # h_1 .. h_T
        else:
            y = h_last
        return y, (xh, gates, c_prev)

    def _bptt(self, params, cache, dy):
        """Backprop through time carrying (dL/dh, dL/dc) from step t+1 to step t.

        .. math::
            \\delta h_t = \\partial L/\\partial y_t + \\delta z_{t+1} W_h^T
            \\delta c_t = \\delta c_{t+1} \\odot f_{t+1} + \\delta h_t \\odot o \\odot (1 - \\tanh^2 c_t)
            \\delta o = \\delta h_t \\odot \\tanh c_t,\\ \\delta i = \\delta c_t \\odot g,\\
            \\delta g = \\delta c_t \\odot i,\\ \\delta f = \\delta c_t \\odot c_{t-1}
            \\delta z = [\\delta i\\, i(1-i),\\ \\delta f\\, f(1-f),\\ \\delta g\\,(1-g^2),\\ \\delta o\\, o(1-o)]
            dW_x = \\sum_t x_t^T \\delta z_t,\\ dW_h = \\sum_t h_{t-1}^T \\delta z_t,\\ db = \\sum_{t,n} \\delta z_t
            dx_t = \\delta z_t W_x^T,\\ dh_0 = \\delta z_1 W_h^T,\\ dc_0 = \\delta c_1 \\odot f_1

        The carry is (delta z_t Wh^T, delta c_t * f_t), both (B, H), and the
        running sums [dW_x; dW_h] (one matmul per step: [x_t, h_(t-1)]^T delta z_t)
        and db: they are accumulated step by step inside the reverse scan, so no
        (T, B, 4H) stack of delta z is ever held (with the forward's cache that
        would double the step's temporary memory, whose fresh pages cost more
        than a few large matmuls over all T*B rows save). The per-step
        gradients returned are the totals delta h_t and delta c_t.
        """
        xh, gates, c_prev = cache
        Wx, Wh = params["Wx"], params["Wh"]
        dys, dh_seed = self._upstream(c_prev, dy)

        def step(carry, inputs):
            dh_next, dc_next, dWxh, db = carry
            dy_t, gates_t, xh_t, cp_t = inputs
            i, f, g, o = jnp.split(gates_t, 4, axis=1)
            tc_t = jnp.tanh(f * cp_t + i * g)  # tanh(c_t), recomputed from the cache
            dh = dh_next if dy_t is None else dh_next + dy_t  # total dL/dh_t
            dc = dc_next + dh * o * (1 - tc_t * tc_t)  # total dL/dc_t
            dz = jnp.concatenate(
                [dc * g * i * (1 - i), dc * cp_t * f * (1 - f), dc * i * (1 - g * g), dh * tc_t * o * (1 - o)], axis=1
            )  # (B, 4H): dL/d[z^i, z^f, z^g, z^o]
            sums = (dWxh + xh_t.T @ dz, db + jnp.sum(dz, axis=0))  # [x_t, h_(t-1)]^T dz: dW_x and dW_h stacked
            return (dz @ Wh.T, dc * f, *sums), (dz @ Wx.T, dh, dc)

        D = Wx.shape[0]
        carry = (dh_seed, jnp.zeros_like(dh_seed), jnp.zeros((D + Wh.shape[0], Wh.shape[1]), Wh.dtype),
                 jnp.zeros_like(params["b"]))
        (dh0, dc0, dWxh, db), (dx, dh, dc) = lax.scan(step, carry, (dys, gates, xh, c_prev), reverse=True)
        dparams = {"Wx": dWxh[:D], "Wh": dWxh[D:], "b": db}
        return dparams, self._dx(_time_major(dx), (dh0, dc0)), {"h": dh, "c": dc}
