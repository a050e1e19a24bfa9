"""The Elman RNN with hand-written backprop through time (BPTT); the interface it shares with LSTM and GRU is ``recurrent_base``.

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

import jax.numpy as jnp
from jax import lax

from manualbp.layers.activations import Activation, Tanh
from manualbp.layers.base import check_params
from manualbp.layers.recurrent_base import RecurrentBase, as_rows, bias_row, time_major


@dataclass(frozen=True)
class RNN(RecurrentBase):
    """Elman RNN: h_t = f(x_t Wx + h_(t-1) Wh + b), f tanh by default.

    Attributes:
      hidden: H, the width of the hidden state.
      activation: f, any activation of ``manualbp.layers.activations`` (an instance,
        e.g. ``ReLU()``); its own forward/backward are used at every step.
      return_sequences: output all hidden states (B, T, H), or the last (B, H).
      initial_state: "zeros", or "given" (input ``(x, h0)``, dx ``(dx, dh0)``).
      variable_length: the input is ``(x, lengths[, h0])``; steps t >= lengths[b]
        are padding (state unchanged, output 0; see ``manualbp.layers.recurrent_base``).

    Params: ``Wx`` (D, H) LeCun-normal (std 1/sqrt(D)), ``Wh`` (H, H)
    orthogonal, ``b`` (H,) zeros.
    """

    hidden: int
    activation: Activation = Tanh()
    return_sequences: bool = True
    initial_state: str = "zeros"
    variable_length: bool = False

    def __post_init__(self):
        self._check_hyperparameters()
        if not isinstance(self.activation, Activation):
            raise TypeError(
                f"RNN: activation must be an activation instance from manualbp.layers.activations (e.g. Tanh()), "
                f"got {self.activation!r}"
            )

    def init(self, key, input_shape, dtype=jnp.float32):
        _, D = self._sequence_shape(input_shape)
        return self._gate_weights(key, D, dtype), self.output_shape(input_shape)

    def forward(self, params, x):
        """x: (B, T, D) or a tuple (x[, lengths][, h0]) -> y: (B, T, H) or (B, H).

        Cache: x and h0, the hidden states hs (T, B, H), the activation's
        per-step cache (None when it is h itself, as for tanh and sigmoid) and
        the mask (T, B, 1) of real steps (None without ``variable_length``).
        """
        check_params(self, params, ("Wx", "Wh", "b"))
        x, (h0,), mask = self._unpack_with_mask(params, x)
        Wx, Wh, b = params["Wx"], params["Wh"], params["b"]
        xs = time_major(x)  # (T, B, D)
        xw = (as_rows(xs) @ Wx).reshape(*xs.shape[:2], self.hidden)  # hoisted: x_t Wx for all t, one matmul
        b = bias_row(b, 2)

        def step(h_prev, inputs):
            xw_t, m_t = inputs
            h, act = self.activation.forward({}, xw_t + h_prev @ Wh + b)  # z_t = x_t Wx + h_(t-1) Wh + b
            act = None if act is h else act
            if m_t is not None:
                h = jnp.where(m_t, h, h_prev)  # a padded step keeps the state
            return h, (h, act)

        _, (hs, act) = lax.scan(step, h0, (xw, mask))
        return self._output(hs, mask), (xs, h0, hs, act, mask)

    def _bptt(self, params, cache, dy):
        """Backprop through time, with dL/dh_t carried from step t+1 to step t.

        .. math::
            \\delta h_t = \\partial L/\\partial y_t + \\delta z_{t+1} W_h^T  \\quad (total dL/dh_t)
            \\delta z_t = \\delta h_t \\odot f'(z_t)
            dW_x = \\sum_t x_t^T \\delta z_t,\\ dW_h = \\sum_t h_{t-1}^T \\delta z_t,\\ db = \\sum_t \\sum_n \\delta z_t
            dx_t = \\delta z_t W_x^T,\\ dh_0 = \\delta z_1 W_h^T

        With variable lengths, a padded step t (h_t = h_(t-1), y_t = 0) has
        delta z_t = 0 and passes delta h_t on unchanged as dL/dh_(t-1).

        The reverse scan carries only delta z_t Wh^T (B, H); the sums over t
        are single matmuls over all T*B rows after it.
        """
        xs, h0, hs, act, mask = cache
        Wx, Wh = params["Wx"], params["Wh"]
        act = hs if act is None else act  # at a padded step not f(z_t), but its delta z_t is zeroed below
        dys, carry = self._upstream(hs, dy, mask)

        def step(dh_next, inputs):
            dy_t, act_t, m_t = inputs
            dh = dh_next if dy_t is None else dh_next + dy_t  # total dL/dh_t
            _, dz = self.activation.backward({}, act_t, dh)  # dL/dz_t = dL/dh_t * f'(z_t)
            if m_t is None:
                return dz @ Wh.T, (dz, dh)
            dz = jnp.where(m_t, dz, 0)  # a padded step computed nothing that was kept
            return jnp.where(m_t, dz @ Wh.T, dh), (dz, dh)  # ... and hands dL/dh_t to h_(t-1) unchanged

        dh0, (dz, dh) = lax.scan(step, carry, (dys, act, mask), reverse=True)
        h_prev = jnp.concatenate([h0[None], hs[:-1]])  # (T, B, H): h_(t-1) for every t
        dz2 = as_rows(dz)  # (T*B, H)
        dparams = {"Wx": as_rows(xs).T @ dz2, "Wh": as_rows(h_prev).T @ dz2, "b": jnp.sum(dz2, axis=0)}
        dx = time_major((dz2 @ Wx.T).reshape(*xs.shape))  # (B, T, D)
        return dparams, self._dx(dx, (dh0,)), {"h": dh}

    def kink_pattern(self, cache):
        """The activation's discrete choices at every step (e.g. ReLU signs); () for a smooth one, None if undeclared."""
        if not getattr(self.activation, "kink_pattern", None):
            return None
        _, _, hs, act, mask = cache
        pattern = self.activation.kink_pattern(hs if act is None else act)
        if mask is None or not hasattr(pattern, "shape"):
            return pattern
        return jnp.where(mask, pattern, False)  # padded steps choose nothing
