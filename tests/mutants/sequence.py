"""Sequence mutants: GRU (gru.py), Bidirectional (bidirectional.py), PositionalEmbedding (positional.py).

The GRU's bugs sit inside its reverse scan, so ``GRUTextbook`` writes the GRU's BPTT out here (as
``mutants.recurrent.LSTMTextbook`` does the LSTM's), from x and the params alone, with ``bug`` switching ONE
line; the textbook with no bug passes ``compare`` (a test checks it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

import manualbp as mbp
from manualbp.layers.bidirectional import _reverse_time
from mutants.base import SeesIO, mutant_of, rows


@mutant_of(mbp.GRU)
class GRUTextbook(SeesIO, mbp.GRU):
    """The GRU's BPTT from x and the params (initial state zeros, PyTorch's gates); ``bug`` names the wrong line.

    .. math::
        dh_t = dy_t + dh_{t+1} z_{t+1} + du_{t+1} W_h^T,\\ da^n = dh_t (1 - z) (1 - n^2)
        da^r = da^n (u^n + b_{hn}) r (1 - r),\\ da^z = dh_t (h_{t-1} - n) z (1 - z),\\ du = [da^r, da^z, r da^n]
    """

    bug = None

    def _bptt(self, params, cache, dy):
        x, (Wx, Wh, b, bhn), H = cache[1], (params["Wx"], params["Wh"], params["b"], params["bhn"]), self.hidden
        xs = jnp.swapaxes(x, 0, 1)  # (T, B, D)
        T, B, _ = xs.shape

        def forward_step(h_prev, x_t):
            a, u = x_t @ Wx + b[None], h_prev @ Wh
            r, z = jax.nn.sigmoid(a[:, :H] + u[:, :H]), jax.nn.sigmoid(a[:, H:2 * H] + u[:, H:2 * H])
            n = jnp.tanh(a[:, 2 * H:] + r * (u[:, 2 * H:] + bhn[None]))
            return (1 - z) * n + z * h_prev, (h_prev, r, z, n, u[:, 2 * H:])

        zeros = jnp.zeros((B, H), x.dtype)
        _, saved = lax.scan(forward_step, zeros, xs)
        dys = jnp.swapaxes(dy, 0, 1) if self.return_sequences else jnp.zeros((T, B, H), dy.dtype).at[-1].set(dy)

        def backward_step(dh_next, inputs):
            dy_t, (h_prev, r, z, n, un) = inputs
            dh = dy_t + dh_next
            dan = dh * (1 - z) * (1 - n * n)
            gated = un if self.bug == "reset_without_bhn" else un + bhn[None]  # right: u^n + b_hn, what r gated
            dar, daz = dan * gated * r * (1 - r), dh * (h_prev - n) * z * (1 - z)
            da, du = jnp.concatenate([dar, daz, dan], axis=1), jnp.concatenate([dar, daz, r * dan], axis=1)
            direct = 0 if self.bug == "no_direct_path" else dh * z  # right: dh z, h_(t-1)'s direct path to h_t
            return direct + du @ Wh.T, (da, du, dh)

        _, (da, du, dh) = lax.scan(backward_step, zeros, (dys, saved), reverse=True)
        dparams = {"Wx": rows(xs).T @ rows(da), "Wh": rows(saved[0]).T @ rows(du), "b": jnp.sum(rows(da), axis=0),
                   "bhn": jnp.sum(rows(du[..., 2 * H:]), axis=0)}
        return dparams, jnp.swapaxes(da @ Wx.T, 0, 1), {"h": dh}


@mutant_of(mbp.GRU)
class GRUNoDirectPath(GRUTextbook):
    """dL/dh_(t-1) = du_t W_h^T only: the direct path h_t = ... + z h_(t-1), gain z, dropped from the carry."""

    bug = "no_direct_path"


@mutant_of(mbp.GRU)
class GRUResetWithoutBhn(GRUTextbook):
    """r's gradient da^n h_(t-1) W_hn: the b_hn that r also gates (PyTorch's r (h W_hn + b_hn)) forgotten."""

    bug = "reset_without_bhn"


@mutant_of(mbp.GRU)
class GRUPaddedStepsUpdate(mbp.GRU):
    """Variable lengths: a padded step's backward runs the cell (carry delta h z + delta u W_h^T) as if h had changed.

    The state after the last real step reaches the output across the padded steps after it, each h_t = h_(t-1):
    its gradient must cross them unchanged. dL/dy is masked as the real layer masks it; only the carry is wrong.
    """

    def _bptt(self, params, cache, dy):
        xh, gates, hn_all, mask = cache
        if self.return_sequences:
            dy = jnp.where(jnp.swapaxes(mask, 0, 1), dy, 0)
        return super()._bptt(params, (xh, gates, hn_all, None), dy)  # right: (xh, gates, hn_all, mask)


@mutant_of(mbp.Bidirectional)
class BidirectionalDxNotReversed(mbp.Bidirectional):
    """dx = dx_f + dx_b: the backward direction's input gradient added in ITS time order, not reversed back to x's."""

    def backward(self, params, cache, dy):
        grads, _ = super().backward(params, cache, dy)
        cf, cb, split, _, _ = cache
        pf, pb = self.split_params(params)
        dyf, dyb = dy[..., :split], jnp.flip(dy[..., split:], axis=1)
        _, dxf = self.layer.backward(pf, cf, dyf)
        _, dxb = self.backward_layer.backward(pb, cb, dyb)
        return grads, dxf + dxb  # right: dxf + jnp.flip(dxb, axis=1)

    def replace_children(self, layers):
        return type(self)(*layers, variable_length=self.variable_length)


@mutant_of(mbp.Bidirectional)
class BidirectionalPaddingReversed(mbp.Bidirectional):
    """Variable lengths: the backward direction's dx flipped over all T steps, padding included, not over each
    sequence's own steps (only dx changes: a bug gradcheck must see through a tuple input (x, lengths))."""

    def backward(self, params, cache, dy):
        grads, (dx, _) = super().backward(params, cache, dy)
        cf, cb, split, lengths, _ = cache
        pf, pb = self.split_params(params)
        _, dxf = self.layer.backward(pf, cf, dy[..., :split])
        _, dxb = self.backward_layer.backward(pb, cb, _reverse_time(dy[..., split:], lengths))
        return grads, (dxf[0] + jnp.flip(dxb[0], axis=1), None)  # right: _reverse_time(dxb[0], lengths)

    def replace_children(self, layers):
        return type(self)(*layers, variable_length=self.variable_length)


@mutant_of(mbp.PositionalEmbedding)
class PositionalMeanOverBatch(mbp.PositionalEmbedding):
    """dP[t] averaged over the sequences of the batch instead of summed (P[t] is shared by every sequence)."""

    def backward(self, params, cache, dy):
        grads, dx = super().backward(params, cache, dy)
        return {"P": grads["P"] / dy.shape[0]}, dx  # right: grads["P"]
