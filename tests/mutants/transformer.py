"""Transformer mutants: softmax.py, dropout.py, attention.py, flash.py and flash_pallas.py (the attention kernels),
transformer.py.

The attention's backward is one method around the kernel call ``flash.backward``; ``AttentionTextbook``
is that method written out here with the kernel call as a hook (``_kernel``), so each attention bug is
ONE changed line of the call or of the kernel's result, whichever kernel the layer names (``kernel``:
the catalog runs each with "loop", "batched" and "pallas"). A bug inside the kernel's block
(``flash._backward_block``, which "loop" and "batched" run, or ``flash_pallas._rowsum``, the Pallas
backward's row term) is ONE changed line of ``_block_textbook`` / ``_rowsum_textbook``, the code written
out here, which the kernel runs in place of its own while the mutant's backward is traced. The textbooks
with the real code pass ``compare`` (a test checks it).
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax.numpy as jnp

import manualbp as mbp
from manualbp.layers import flash, flash_pallas
from manualbp.layers.attention import _flat, _heads, _merge
from manualbp.layers.softmax import softmax_vjp
from mutants.base import SeesIO, mutant_of


@mutant_of(mbp.Softmax)
class SoftmaxNoRowsum(SeesIO, mbp.Softmax):
    """dx = y * dy: the softmax Jacobian's diagonal only, its - y sum(dy y) term dropped."""

    def backward(self, params, cache, dy):
        return {}, cache[2] * dy  # right: y * (dy - sum(dy * y, axis))


@mutant_of(mbp.Dropout)
class DropoutNoScale(mbp.Dropout):
    """dx = dy * m: the mask applied, its 1 / (1 - rate) scale forgotten (the forward has it)."""

    def backward(self, params, cache, dy):
        _, dx = super().backward(params, cache, dy)
        return {}, dx * (1 - self.rate)  # right: dx

    # Dropout's __eq__ answers True for a subclass with the same rate and key (reflected from the subclass's
    # side), so the clean and the mutant model would share jit's compiled step: tell them apart by identity
    __eq__, __hash__ = object.__eq__, object.__hash__


@mutant_of(mbp.MultiHeadAttention)
class AttentionTextbook(mbp.MultiHeadAttention):
    """``MultiHeadAttention.backward`` (self-attention, no key mask) with the kernel call as the hook ``_kernel``."""

    def _kernel(self, residuals, do):
        return flash.backward(self.kernel, residuals, do, self.causal, None, self.block_size)

    def backward(self, params, cache, dy):
        x, _, residuals, om, _ = cache
        dh = residuals[0].shape[-1]
        grads = {"Wo": _flat(om).T @ _flat(dy)}
        do = _heads(dy @ params["Wo"].T, self.num_heads)
        dqs, dkt, dvt = self._kernel(residuals, do)
        dq = _merge(dqs) * jnp.asarray(1 / math.sqrt(dh), x.dtype)
        dk, dv = _merge(jnp.swapaxes(dkt, 1, 2)), _merge(jnp.swapaxes(dvt, 1, 2))
        grads.update(Wq=_flat(x).T @ _flat(dq), Wk=_flat(x).T @ _flat(dk), Wv=_flat(x).T @ _flat(dv),
                     bq=jnp.sum(_flat(dq), axis=0), bv=jnp.sum(_flat(dv), axis=0), bo=jnp.sum(_flat(dy), axis=0))
        return grads, dq @ params["Wq"].T + dk @ params["Wk"].T + dv @ params["Wv"].T


@mutant_of(mbp.MultiHeadAttention)
class AttentionCausalMaskNotReapplied(AttentionTextbook):
    """P recomputed in the backward WITHOUT the causal mask: future keys get probability and gradient."""

    def _kernel(self, residuals, do):
        return flash.backward(self.kernel, residuals, do, False, None, self.block_size)  # right: self.causal


def _block_textbook(q, kt, vt, do, start, causal, mask, *, rowsum=True):
    """``flash._backward_block`` written out: P^T recomputed, dV = P^T dO, dS = P (dP - rowsum(P dP)), dQ, dK."""
    pt = flash._softmax_t(flash._scores_t(q, kt, start, causal, mask))
    dvt = jnp.einsum("bhkq,bqhd->bhkd", pt, do)
    dpt = jnp.einsum("bhkd,bqhd->bhkq", vt, do)
    dst = softmax_vjp(pt, dpt, 2) if rowsum else pt * dpt  # the mutant: D = 0
    return jnp.einsum("bhkq,bhkd->bqhd", dst, kt), jnp.einsum("bhkq,bqhd->bhkd", dst, q), dvt


def _rowsum_textbook(p, dp, *, rowsum=True):
    """``flash_pallas._rowsum`` written out: D_i = sum_j P_ij dP_ij over a key tile."""
    return jnp.sum(p * dp, axis=1) if rowsum else jnp.zeros(p.shape[:1], p.dtype)  # the mutant: D = 0


@contextlib.contextmanager
def _kernel_block(block, rowsum):
    """The kernels run ``block`` for their blocks and ``rowsum`` for their tiles' row term while the mutant's
    backward is traced (jit traces it once)."""
    real = flash._backward_block, flash_pallas._rowsum
    flash._backward_block, flash_pallas._rowsum = block, rowsum
    try:
        yield
    finally:
        flash._backward_block, flash_pallas._rowsum = real


@mutant_of(mbp.MultiHeadAttention)
class FlashBlockTextbook(AttentionTextbook):
    """The kernel with its block written out here (``_block_textbook``, ``_rowsum_textbook``): no bug; the control
    of the next one."""

    block = staticmethod(_block_textbook)
    rowsum = staticmethod(_rowsum_textbook)

    def _kernel(self, residuals, do):
        with _kernel_block(self.block, self.rowsum):
            return flash.backward(self.kernel, residuals, do, self.causal, None, self.block_size)


@mutant_of(mbp.MultiHeadAttention)
class FlashNoRowsumTerm(FlashBlockTextbook):
    """The kernel's dS = P dP: its - P rowsum(P dP) term dropped (D_i = 0)."""

    block = staticmethod(functools.partial(_block_textbook, rowsum=False))  # right: rowsum=True
    rowsum = staticmethod(functools.partial(_rowsum_textbook, rowsum=False))  # right: rowsum=True (Pallas)


@mutant_of(mbp.MultiHeadAttention)
class FlashDKUnscaled(AttentionTextbook):
    """The kernel's dK = dS^T Q, the 1/sqrt(dh) of S = Q K^T / sqrt(dh) missing (dQ keeps it)."""

    def _kernel(self, residuals, do):
        dqs, dkt, dvt = flash.backward(self.kernel, residuals, do, self.causal, None, self.block_size)
        return dqs, dkt * math.sqrt(dqs.shape[-1]), dvt  # right: dkt (= dS^T (Q / sqrt(dh)))


@mutant_of(mbp.TransformerBlock)
class BlockFirstResidualNoIdentity(mbp.TransformerBlock):
    """dx = J_attn^T dy_1: the FIRST residual's identity path dropped (y_1 = x + attn branch(x))."""

    dropped = 1  # the branch whose identity path is lost, counted as backward meets them (0: the MLP's)

    def backward(self, params, cache, dy):
        grads = {}
        for i, branch in enumerate(reversed(self._branches())):
            d = dy
            for n, layer in reversed(branch):
                grads[n], d = layer.backward(params[n], cache[n], d)
            dy = d if i == self.dropped else dy + d  # right: dy + d for both branches
        return grads, dy

    def replace_children(self, layers):
        return type(self).from_parts(zip([n for n, _ in self.parts], layers))


@mutant_of(mbp.TransformerBlock)
class BlockSecondResidualNoIdentity(BlockFirstResidualNoIdentity):
    """dy_1 = J_mlp^T dy: the SECOND residual's identity path dropped (y = y_1 + mlp branch(y_1))."""

    dropped = 0
