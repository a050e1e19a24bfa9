"""LSTM with hand-written backprop through time; the interface it shares with RNN and GRU is ``manualbp.layers.recurrent_base``."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
from jax import lax

from manualbp.layers.activations import sigmoid
from manualbp.layers.base import check_params
from manualbp.layers.recurrent_base import RecurrentBase, as_rows, bias_row, time_major


@dataclass(frozen=True)
class LSTM(RecurrentBase):
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
      variable_length: the input is ``(x, lengths[, h0, c0])``; steps t >= lengths[b]
        are padding (h and c unchanged, output 0; see ``manualbp.layers.recurrent_base``).

    Params: ``Wx`` (D, 4H) LeCun-normal, ``Wh`` (H, 4H) orthogonal per gate,
    ``b`` (4H,) zeros except the forget gate's 1 (Jozefowicz et al. 2015).
    Gate blocks are laid out [i | f | g | o] along the last axis.
    """

    hidden: int
    return_sequences: bool = True
    initial_state: str = "zeros"
    variable_length: bool = False

    n_states = 2
    n_gates = 4

    def __post_init__(self):
        self._check_hyperparameters()

    def init(self, key, input_shape, dtype=jnp.float32):
        _, D = self._sequence_shape(input_shape)
        H = self.hidden
        params = self._gate_weights(key, D, dtype)
        params["b"] = params["b"].at[H : 2 * H].set(1)  # forget gate bias 1
        return params, self.output_shape(input_shape)

    def forward(self, params, x):
        """x: (B, T, D) or a tuple (x[, lengths][, h0, c0]) -> y: (B, T, H) or (B, H).

        Cache, per step (T, B, .): [x_t, h_(t-1)] (D + H, side by side: the
        rows of both weight gradients at step t), the gates [i, f, g, o] (4H)
        and the cell state c_(t-1) the step started from; c_t and tanh(c_t) are
        recomputed by the backward pass from these (cheaper than storing them);
        with ``variable_length``, the mask (T, B, 1) of real steps (else None).

        The gates are written over the buffer of the hoisted x_t Wx (step t reads
        row t, then overwrites it), so the forward holds one (T, B, 4H) array,
        not two: the whole step's temporaries stay small enough for the
        allocator to reuse them instead of mapping fresh pages every call.
        """
        check_params(self, params, ("Wx", "Wh", "b"))
        x, (h0, c0), mask = self._unpack_with_mask(params, x)
        Wx, Wh, b = params["Wx"], params["Wh"], bias_row(params["b"], 2)
        H = self.hidden
        xs = time_major(x)  # (T, B, D)
        T, B, D = xs.shape
        xw = (as_rows(xs) @ Wx).reshape(T, B, 4 * H)  # hoisted: x_t Wx for all t, one matmul

        def step(t, state):
            h_prev, c_prev, gates, xh, cs = state
            z = lax.dynamic_index_in_dim(gates, t, keepdims=False) + h_prev @ Wh + b  # x_t Wx + h_(t-1) Wh + b
            # [i, f, g, o] = [sigma(z^i), sigma(z^f), tanh(z^g), sigma(z^o)], sigma(z) = 1/(1 + e^-z): not
            # (tanh(z/2) + 1)/2, which keeps only absolute precision (~1e-8 in float32) for a gate shut tight
            act = jnp.concatenate([sigmoid(z[:, :2 * H]), jnp.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])], axis=1)
            i, f, g, o = jnp.split(act, 4, axis=1)
            c = f * c_prev + i * g
            h = o * jnp.tanh(c)
            if mask is not None:  # a padded step keeps both states
                m_t = lax.dynamic_index_in_dim(mask, t, keepdims=False)
                h, c = jnp.where(m_t, h, h_prev), jnp.where(m_t, c, c_prev)
            return (h, c, lax.dynamic_update_index_in_dim(gates, act, t, 0),
                    lax.dynamic_update_slice(xh, h_prev[None], (t, 0, D)), lax.dynamic_update_index_in_dim(cs, c_prev, t, 0))

        states = jnp.zeros((T, B, H), x.dtype)
        xh = jnp.concatenate([xs, states], axis=2)  # (T, B, D + H): [x_t, h_(t-1)], the rows of both dW at step t
        h_last, _, gates, xh, c_prev = lax.fori_loop(0, T, step, (h0, c0, xw, xh, states))
        y = self._output(jnp.concatenate([xh[1:, :, D:], h_last[None]]), mask) if self.return_sequences else h_last
        return y, (xh, gates, c_prev, mask)

    def _bptt(self, params, cache, dy):
        """Backprop through time carrying (dL/dh, dL/dc) from step t+1 to step t.

        .. math::
            \\delta h_t = \\partial L/\\partial y_t + \\delta z_{t+1} W_h^T
            \\delta c_t = \\delta c_{t+1} \\odot f_{t+1} + \\delta h_t \\odot o \\odot (1 - \\tanh c_t)(1 + \\tanh c_t)
            \\delta o = \\delta h_t \\odot \\tanh c_t,\\ \\delta i = \\delta c_t \\odot g,\\
            \\delta g = \\delta c_t \\odot i,\\ \\delta f = \\delta c_t \\odot c_{t-1}
            \\delta z = [\\delta i\\, i(1-i),\\ \\delta f\\, f(1-f),\\ \\delta g\\,(1-g)(1+g),\\ \\delta o\\, o(1-o)]
            dW_x = \\sum_t x_t^T \\delta z_t,\\ dW_h = \\sum_t h_{t-1}^T \\delta z_t,\\ db = \\sum_{t,n} \\delta z_t
            dx_t = \\delta z_t W_x^T,\\ dh_0 = \\delta z_1 W_h^T,\\ dc_0 = \\delta c_1 \\odot f_1

        The carry is (delta z_t Wh^T, delta c_t * f_t), both (B, H), and the
        running sums [dW_x; dW_h] (one matmul per step: [x_t, h_(t-1)]^T delta z_t)
        and db: they are accumulated step by step inside the reverse scan, so no
        (T, B, 4H) stack of delta z is ever held (with the forward's cache that
        would double the step's temporary memory, whose fresh pages cost more
        than a few large matmuls over all T*B rows save). The per-step
        gradients returned are the totals delta h_t and delta c_t.

        With variable lengths, a padded step t (h_t = h_(t-1), c_t = c_(t-1),
        y_t = 0) has delta z_t = 0 and passes (delta h_t, delta c_(t+1) f_(t+1))
        on unchanged: the total delta c_t there is what arrives from step t+1.
        """
        xh, gates, c_prev, mask = cache
        Wx, Wh = params["Wx"], params["Wh"]
        dys, dh_seed = self._upstream(c_prev, dy, mask)

        def step(carry, inputs):
            dh_next, dc_next, dWxh, db = carry
            dy_t, gates_t, xh_t, cp_t, m_t = inputs
            i, f, g, o = jnp.split(gates_t, 4, axis=1)
            tc_t = jnp.tanh(f * cp_t + i * g)  # tanh(c_t), recomputed from the cache
            dh = dh_next if dy_t is None else dh_next + dy_t  # total dL/dh_t
            dc = dc_next + dh * o * (1 - tc_t) * (1 + tc_t)  # total dL/dc_t; tanh' = (1 - t)(1 + t), not 1 - t^2
            dz = jnp.concatenate(
                [dc * g * i * (1 - i), dc * cp_t * f * (1 - f), dc * i * (1 - g) * (1 + g), dh * tc_t * o * (1 - o)], axis=1
            )  # (B, 4H): dL/d[z^i, z^f, z^g, z^o]
            dh_prev, dc_prev = dz @ Wh.T, dc * f
            if m_t is not None:  # a padded step: no delta z, and both carries pass through unchanged
                dz = jnp.where(m_t, dz, 0)
                dh_prev, dc_prev, dc = jnp.where(m_t, dh_prev, dh), jnp.where(m_t, dc_prev, dc_next), jnp.where(m_t, dc, dc_next)
            sums = (dWxh + xh_t.T @ dz, db + jnp.sum(dz, axis=0))  # [x_t, h_(t-1)]^T dz: dW_x and dW_h stacked
            return (dh_prev, dc_prev, *sums), (dz @ Wx.T, dh, dc)

        D = Wx.shape[0]
        carry = (dh_seed, jnp.zeros_like(dh_seed), jnp.zeros((D + Wh.shape[0], Wh.shape[1]), Wh.dtype),
                 jnp.zeros_like(params["b"]))
        (dh0, dc0, dWxh, db), (dx, dh, dc) = lax.scan(step, carry, (dys, gates, xh, c_prev, mask), reverse=True)
        dparams = {"Wx": dWxh[:D], "Wh": dWxh[D:], "b": db}
        return dparams, self._dx(time_major(dx), (dh0, dc0)), {"h": dh, "c": dc}
