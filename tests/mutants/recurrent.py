"""Recurrent mutants: RNN (rnn.py) and LSTM (lstm.py).

The RNN mutants change the real ``RNN._bptt`` from outside: its result (dh0 dropped, dWh from h_t), or the
Wh its reverse scan multiplies by (zero: BPTT truncated to one step; transposed: the carry's W_h^T written
W_h), which is exactly the one-line bug since the forward has already run.

The LSTM's bugs sit inside its reverse scan, so ``LSTMTextbook`` writes the LSTM's BPTT out here, from x and
the params alone (independent of the real layer's cache layout), with ``bug`` switching ONE line. The
textbook with no bug passes ``compare`` (a test checks it), so each bug's failure is that line's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import manualbp as mbp
from mutants.base import SeesIO, mutant_of, rows


@mutant_of(mbp.RNN)
class RNNTruncatedBPTT(mbp.RNN):
    """BPTT truncated to one step: dL/dh_(t-1) gets dy_(t-1) only, the carry dz_t W_h^T is dropped."""

    def _bptt(self, params, cache, dy):
        return super()._bptt({**params, "Wh": jnp.zeros_like(params["Wh"])}, cache, dy)  # right: params


@mutant_of(mbp.RNN)
class RNNCarryNoTranspose(mbp.RNN):
    """The carry dL/dh_(t-1) += dz_t W_h, where W_h^T belongs (W_h is square, so it runs)."""

    def _bptt(self, params, cache, dy):
        return super()._bptt({**params, "Wh": params["Wh"].T}, cache, dy)  # right: params


@mutant_of(mbp.RNN)
class RNNdWhFromCurrentState(SeesIO, mbp.RNN):
    """dW_h = sum_t h_t^T dz_t: the state the step PRODUCED where the one it read, h_(t-1), belongs (tanh, every h_t out)."""

    def _bptt(self, params, cache, dy):
        dparams, dx, steps = super()._bptt(params, cache[0], dy)
        hs = jnp.swapaxes(cache[2], 0, 1)  # (T, B, H): every h_t (return_sequences=True)
        dz = steps["h"] * (1 - hs * hs)  # dL/dz_t = dL/dh_t tanh'(z_t)
        dparams["Wh"] = rows(hs).T @ rows(dz)  # right: rows(h_(t-1)).T @ rows(dz)
        return dparams, dx, steps


@mutant_of(mbp.RNN)
class RNNInitialStateNoGradient(mbp.RNN):
    """A given initial state treated as a constant: dh0 = 0 instead of dz_1 W_h^T."""

    def _bptt(self, params, cache, dy):
        dparams, (dx, dh0), steps = super()._bptt(params, cache, dy)
        return dparams, (dx, jnp.zeros_like(dh0)), steps  # right: dh0


@mutant_of(mbp.LSTM)
class LSTMTextbook(SeesIO, mbp.LSTM):
    """The LSTM's BPTT from x and the params (initial state zeros); ``bug`` names the one line that is wrong.

    .. math::
        dh_t = dy_t + dz_{t+1} W_h^T,\\ dc_t = dc_{t+1} f_{t+1} + dh_t o_t (1 - \\tanh^2 c_t)
        dz_t = [dc_t g_t i_t(1-i_t),\\ dc_t c_{t-1} f_t(1-f_t),\\ dc_t i_t (1-g_t^2),\\ dh_t \\tanh(c_t) o_t(1-o_t)]
    """

    bug = None

    def _bptt(self, params, cache, dy):
        x, (Wx, Wh, b), H = cache[1], (params["Wx"], params["Wh"], params["b"]), self.hidden
        xs = jnp.swapaxes(x, 0, 1)  # (T, B, D)
        T, B, _ = xs.shape

        def forward_step(state, x_t):
            h_prev, c_prev = state
            z = x_t @ Wx + h_prev @ Wh + b[None]
            i, f, o = (jax.nn.sigmoid(z[:, k * H:(k + 1) * H]) for k in (0, 1, 3))
            g = jnp.tanh(z[:, 2 * H:3 * H])
            c = f * c_prev + i * g
            return (o * jnp.tanh(c), c), (h_prev, c_prev, c, i, f, g, o)

        zeros = jnp.zeros((B, H), x.dtype)
        _, saved = lax.scan(forward_step, (zeros, zeros), xs)
        dys = jnp.swapaxes(dy, 0, 1) if self.return_sequences else jnp.zeros((T, B, H), dy.dtype).at[-1].set(dy)

        def backward_step(carry, inputs):
            dh_next, dc_next = carry  # dz_(t+1) W_h^T and dc_(t+1) f_(t+1)
            dy_t, (_, c_prev, c, i, f, g, o) = inputs
            dh = dy_t + dh_next
            tc = jnp.tanh(c)
            dc = dc_next + dh * o * (1 if self.bug == "no_tanh_prime" else 1 - tc * tc)  # right: 1 - tc^2
            c_f = c if self.bug == "forget_from_c_t" else c_prev  # right: c_(t-1)
            dz = jnp.concatenate([dc * g * i * (1 - i), dc * c_f * f * (1 - f), dc * i * (1 - g * g),
                                  dh * tc * o * (1 - o)], axis=1)
            dc_carry = dc if self.bug == "no_forget_in_carry" else dc * f  # right: dc * f
            return (dz @ Wh.T, dc_carry), (dz, dh, dc)

        _, (dz, dh, dc) = lax.scan(backward_step, (zeros, zeros), (dys, saved), reverse=True)
        dparams = {"Wx": rows(xs).T @ rows(dz), "Wh": rows(saved[0]).T @ rows(dz), "b": jnp.sum(rows(dz), axis=0)}
        return dparams, jnp.swapaxes(dz @ Wx.T, 0, 1), {"h": dh, "c": dc}


@mutant_of(mbp.LSTM)
class LSTMForgetFromCurrentCell(LSTMTextbook):
    """The forget gate's gradient dc_t c_t f(1-f), where the cell it gated, c_(t-1), belongs."""

    bug = "forget_from_c_t"


@mutant_of(mbp.LSTM)
class LSTMCarryWithoutForget(LSTMTextbook):
    """dc_(t-1) receives dc_t, not dc_t f_t: the cell path's gain f dropped."""

    bug = "no_forget_in_carry"


@mutant_of(mbp.LSTM)
class LSTMNoTanhPrime(LSTMTextbook):
    """dc_t += dh_t o: the tanh'(c_t) = 1 - tanh^2 c_t factor of h_t = o tanh(c_t) dropped."""

    bug = "no_tanh_prime"


@mutant_of(mbp.RNN)
class RNNPaddedStepsKeepDy(mbp.RNN):
    """Variable lengths: dL/dy of a padded step is not dropped (its output is a constant 0: it reaches nothing)."""

    def _upstream(self, states, dy, mask=None):
        return super()._upstream(states, dy, None)  # right: mask
