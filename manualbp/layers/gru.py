"""GRU with hand-written backprop through time; the interface it shares with RNN and LSTM is ``manualbp.layers.recurrent_base``."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax

from manualbp.layers.activations import sigmoid
from manualbp.layers.base import check_param, check_params
from manualbp.layers.recurrent_base import RecurrentBase, as_rows, bias_row, time_major


@dataclass(frozen=True)
class GRU(RecurrentBase):
    """Gated recurrent unit (Cho et al. 2014), gates r (reset), z (update) and candidate n, PyTorch's convention.

    .. math::
        [a^r, a^z, a^n] = x_t W_x + b,\\qquad [u^r, u^z, u^n] = h_{t-1} W_h
        r = \\sigma(a^r + u^r),\\ z = \\sigma(a^z + u^z)
        n = \\tanh(a^n + r \\odot (u^n + b_{hn}))
        h_t = (1 - z) \\odot n + z \\odot h_{t-1}

    The convention is PyTorch's ``nn.GRU`` (and cuDNN's, Keras' ``reset_after=True``):
    r scales the recurrent term AFTER the matmul, r (h W_hn + b_hn), so the
    recurrent product of all three gates is one (B, H) x (H, 3H) matmul. (The
    original paper applies r first: (r h) W_hn; a different cell.) b_hn must
    stay separate from b's n block because r multiplies it; PyTorch's b_hr and
    b_hz would only add to b's r and z blocks, so they are left out.

    Attributes:
      hidden: H, the width of h.
      return_sequences: output all hidden states (B, T, H), or the last (B, H).
      initial_state: "zeros", or "given" (input ``(x, h0)``, dx ``(dx, dh0)``).
      variable_length: the input is ``(x, lengths[, h0])``; steps t >= lengths[b]
        are padding (h unchanged, output 0; see ``manualbp.layers.recurrent_base``).

    Params: ``Wx`` (D, 3H) LeCun-normal, ``Wh`` (H, 3H) orthogonal per gate,
    ``b`` (3H,) zeros, ``bhn`` (H,) zeros. Gate blocks are laid out
    [r | z | n] along the last axis.
    """

    hidden: int
    return_sequences: bool = True
    initial_state: str = "zeros"
    variable_length: bool = False
    n_gates = 3  # [r | z | n]

    def __post_init__(self):
        self._check_hyperparameters()

    def init(self, key, input_shape, dtype=jnp.float32):
        _, D = self._sequence_shape(input_shape)
        params = {**self._gate_weights(key, D, dtype), "bhn": jnp.zeros((self.hidden,), dtype)}
        return params, self.output_shape(input_shape)

    def _check(self, params, x):
        check_params(self, params, ("Wx", "Wh", "b", "bhn"))
        x, states, mask = self._unpack_with_mask(params, x)  # Wx (D, 3H), Wh (H, 3H), b (3H,): n_gates = 3
        check_param(self, params, "bhn", (self.hidden,), like=x, why=f"(hidden,) = ({self.hidden},)")
        return x, states, mask

    def forward(self, params, x):
        """x: (B, T, D) or a tuple (x[, lengths][, h0]) -> y: (B, T, H) or (B, H).

        Cache, per step (T, B, .): the gates [r, z, n] (3H), u^n + b_hn (H, what
        dL/dr needs), and [x_t, h_(t-1)] (D + H, side by side: the rows of both
        weight gradients at step t); with ``variable_length``, the mask (T, B, 1)
        of real steps (else None). The gates are written over the buffer of
        the hoisted x_t W_x (step t reads row t, then overwrites it), so the
        forward holds one (T, B, 3H) array, not two.
        """
        x, (h0,), mask = self._check(params, x)
        Wx, Wh, b, bhn = params["Wx"], params["Wh"], bias_row(params["b"], 2), bias_row(params["bhn"], 2)
        H = self.hidden
        xs = time_major(x)  # (T, B, D)
        T, B, D = xs.shape
        xw = (as_rows(xs) @ Wx).reshape(T, B, 3 * H)  # hoisted: x_t Wx for all t, one matmul

        def step(t, state):
            h_prev, gates, hn_all, xh = state
            a = lax.dynamic_index_in_dim(gates, t, keepdims=False) + b  # (B, 3H): [a^r, a^z, a^n] = x_t Wx + b
            u = h_prev @ Wh  # (B, 3H): [u^r, u^z, u^n]
            rz = sigmoid(a[:, : 2 * H] + u[:, : 2 * H])  # 1/(1 + e^-s): full relative precision when a gate saturates
            r, z = rz[:, :H], rz[:, H:]
            hn = u[:, 2 * H :] + bhn  # h_(t-1) W_hn + b_hn: what r gates
            n = jnp.tanh(a[:, 2 * H :] + r * hn)
            h = n + z * (h_prev - n)  # (1 - z) n + z h_(t-1)
            if mask is not None:  # a padded step keeps the state
                h = jnp.where(lax.dynamic_index_in_dim(mask, t, keepdims=False), h, h_prev)
            return (h, lax.dynamic_update_index_in_dim(gates, jnp.concatenate([rz, n], axis=1), t, 0),
                    lax.dynamic_update_index_in_dim(hn_all, hn, t, 0),
                    lax.dynamic_update_slice(xh, h_prev[None], (t, 0, D)))

        hn_all = jnp.zeros((T, B, H), x.dtype)
        xh = jnp.concatenate([xs, hn_all], axis=2)  # (T, B, D + H): [x_t, h_(t-1)]
        h_last, gates, hn_all, xh = lax.fori_loop(0, T, step, (h0, xw, hn_all, xh))
        y = self._output(jnp.concatenate([xh[1:, :, D:], h_last[None]]), mask) if self.return_sequences else h_last
        return y, (xh, gates, hn_all, mask)

    def _bptt(self, params, cache, dy):
        """Backprop through time carrying dL/dh from step t+1 to step t.

        .. math::
            \\delta h_t = \\partial L/\\partial y_t + \\delta h_{t+1} \\odot z_{t+1} + \\delta u_{t+1} W_h^T
            \\delta n = \\delta h_t \\odot (1 - z),\\quad \\delta z = \\delta h_t \\odot (h_{t-1} - n)
            \\delta a^n = \\delta n \\odot (1 - n)(1 + n),\\quad \\delta r = \\delta a^n \\odot (u^n + b_{hn})
            \\delta a^r = \\delta r \\odot r (1 - r),\\quad \\delta a^z = \\delta z \\odot z (1 - z)
            \\delta a = [\\delta a^r, \\delta a^z, \\delta a^n],\\quad \\delta u = [\\delta a^r, \\delta a^z, r \\odot \\delta a^n]
            dW_x = \\sum_t x_t^T \\delta a_t,\\ db = \\sum_{t,n} \\delta a_t,\\ dx_t = \\delta a_t W_x^T
            dW_h = \\sum_t h_{t-1}^T \\delta u_t,\\ db_{hn} = \\sum_{t,n} r \\odot \\delta a^n_t
            dh_0 = \\delta h_1 \\odot z_1 + \\delta u_1 W_h^T

        h_(t-1) reaches h_t twice: directly (gain z, no matrix) and through
        u = h_(t-1) W_h into all three gates. delta a and delta u differ only in
        the n block: r multiplies u^n + b_hn, not a^n.

        The carry is delta h_t z_t + delta u_t Wh^T (B, H) and the running sums
        dW_x, dW_h, db, db_hn, accumulated step by step inside the reverse
        scan (as the LSTM's), so no (T, B, 3H) stack of deltas is held on top
        of the cache. The per-step gradients returned are the totals delta h_t.

        With variable lengths, a padded step t (h_t = h_(t-1), y_t = 0) has
        delta a_t = delta u_t = 0 and passes delta h_t to step t-1 unchanged.
        """
        xh, gates, hn_all, mask = cache
        Wx, Wh = params["Wx"], params["Wh"]
        H, D = self.hidden, Wx.shape[0]
        dys, dh_seed = self._upstream(hn_all, dy, mask)

        def step(carry, inputs):
            dh_next, dWx, dWh, db, dbhn = carry
            dy_t, gates_t, hn, xh_t, m_t = inputs
            r, z, n = gates_t[:, :H], gates_t[:, H : 2 * H], gates_t[:, 2 * H :]
            x_t, h_prev = xh_t[:, :D], xh_t[:, D:]
            dh = dh_next if dy_t is None else dh_next + dy_t  # total dL/dh_t
            dan = dh * (1 - z) * (1 - n) * (1 + n)  # dL/da^n: through n, tanh' = (1 - n)(1 + n)
            dar = dan * hn * r * (1 - r)  # dL/da^r: dr = dan (u^n + b_hn), sigma' = r (1 - r)
            daz = dh * (h_prev - n) * z * (1 - z)  # dL/da^z: dz = dh (h_(t-1) - n)
            run = dan * r  # dL/du^n (= dL/db_hn)
            da = jnp.concatenate([dar, daz, dan], axis=1)  # (B, 3H)
            du = jnp.concatenate([dar, daz, run], axis=1)  # (B, 3H)
            dh_prev = dh * z + du @ Wh.T
            if m_t is not None:  # a padded step: no delta a or delta u, and delta h passes through unchanged
                da, du, run, dh_prev = jnp.where(m_t, da, 0), jnp.where(m_t, du, 0), jnp.where(m_t, run, 0), jnp.where(m_t, dh_prev, dh)
            sums = (dWx + x_t.T @ da, dWh + h_prev.T @ du, db + jnp.sum(da, axis=0), dbhn + jnp.sum(run, axis=0))
            return (dh_prev, *sums), (da @ Wx.T, dh)

        carry = (dh_seed, jnp.zeros_like(Wx), jnp.zeros_like(Wh), jnp.zeros_like(params["b"]),
                 jnp.zeros_like(params["bhn"]))
        (dh0, dWx, dWh, db, dbhn), (dx, dh) = lax.scan(step, carry, (dys, gates, hn_all, xh, mask), reverse=True)
        dparams = {"Wx": dWx, "Wh": dWh, "b": db, "bhn": dbhn}
        return dparams, self._dx(time_major(dx), (dh0,)), {"h": dh}
