"""The attention kernel of ``MultiHeadAttention``: softmax(Q K^T / sqrt(dh)) V and its backward, by blocks of rows.

Per head (batch and head indices dropped), queries Q (T, dh), keys K and
values V (S, dh), and a set of allowed pairs (i, j) (the masks):

    S_ij = Q_i . K_j / sqrt(dh)  (allowed; -inf elsewhere)     P_i = softmax(S_i) over the row's keys
    O = P V   (T, dh)

Backward, given dO (Dao et al., 2022, "FlashAttention", section 3.1 and appendix B.2):

    dV = P^T dO                     dP = dO V^T
    dS_ij = P_ij (dP_ij - D_i),     D_i = sum_k P_ik dP_ik       (softmax's Jacobian, row by row;
                                                                  two passes, ``softmax.softmax_vjp``)
    dQ = dS K / sqrt(dh)            dK = dS^T Q / sqrt(dh)

Between forward and backward only Q, K and V are kept (and O, which the
output projection's dWo needs anyway), never P: the backward recomputes P,
a block of query rows at a time, so its temporaries are (B, heads, rows, S)
for one block. A block holds whole rows (every key of its queries), so the
backward recomputes P exactly as the forward computes it (the row's max,
exp, and sum over its keys), and sums D_i over the row's keys.

FlashAttention instead keeps the row's log-sum-exp, recomputes P = exp(S -
lse), and uses D_i = sum_k P_ik (dO_i . V_k) = dO_i . O_i. Both are exact in
exact arithmetic; in floating point they are not the same where dS is 0.
With one allowed key in a row, P_i is the constant 1 and dS_i = 0: softmax
(and jax.grad) give exactly 1 and 0, while exp(S - lse) with S recomputed
by another product, and dP - dO.O, two dot products rounded apart, leave
~1e-9 (a false FAIL against jax.grad's exact 0 in dQ, dK and their
weights). Here a one-key row gets P = exp(0) / 1 = 1 and D = dP exactly (and
softmax_vjp's second pass sums only zeros there).

Masks: a masked pair has S_ij = -inf, so P_ij = 0 exactly and dS_ij = 0:
no gradient reaches its score. A row with no allowed key gets P_i = 0 and
O_i = 0 (its sum of exponentials is 0: divided by 1 instead).

Keeping only that is a promise about what XLA keeps too, and XLA may break
it three ways; each is closed here and the memory test checks the result:

- CSE: had the backward recomputed the forward's very product Q K^T, XLA
  would merge the two and keep the forward's (B, heads, T, S) alive. The
  backward forms S^T = K Q^T instead, a different product.
- Scheduling: anything computed from forward values alone (the
  recomputation, a copy, a buffer of zeros) may be scheduled during the
  forward pass and held until the backward. So every block, the first and
  the last included, runs inside one loop whose inputs include dO, the sums
  start from the first block rather than from zeros, and the loop has at
  least two blocks (a one-trip loop is inlined by XLA).
- Copies: a loop's inputs that are used after it are copied; so the
  forward's cached Q, K^T, V^T are the loop's outputs (passed through).

Block i covers rows [min(i r, T - r), ... + r): the last block is shifted
back to end at row T and may overlap the previous one. The forward then
computes the shared rows twice, identically; the backward gives them dO = 0
in the second block (so dP = 0, D = 0, dS = 0: no second contribution to
dK, dV) and keeps their dQ.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from manualbp.layers.softmax import softmax_vjp

_BLOCK_BYTES = 4 << 20  # one (B, heads, rows, S) temporary per block: well inside cache, far below glibc's mmap threshold


def rows_per_block(B, H, T, S, itemsize, block_size):
    """Query rows per block: ``block_size``; or as many as keep one (B, H, rows, S) block within _BLOCK_BYTES,
    and at most half of T, so that the backward always runs as a loop (see ``attend_backward``)."""
    if block_size is not None:
        return min(block_size, T)
    return max(1, min(-(-T // 2), _BLOCK_BYTES // (B * H * S * itemsize)))


def _allowed(rows, S, causal, mask):
    """(B or 1, 1, len(rows), S) bool of the allowed (query, key) pairs, or None when every pair is allowed."""
    allowed = None
    if causal:
        allowed = (jnp.arange(S)[None, :] <= rows[:, None])[None, None]
    if mask is not None:
        m = mask[:, None, None, :]
        allowed = m if allowed is None else allowed & m
    return allowed


def _scores(q, kt, start, causal, mask):
    """S = (Q / sqrt(dh)) K^T for the query rows start, start + 1, ...: (B, H, rows, S), -inf where masked."""
    s = jnp.einsum("bqhd,bhkd->bhqk", q, kt)
    allowed = _allowed(start + jnp.arange(q.shape[1]), kt.shape[2], causal, mask)
    return s if allowed is None else jnp.where(allowed, s, -jnp.inf)


def _scores_t(q, kt, start, causal, mask):
    """S^T = K (Q / sqrt(dh))^T, (B, H, S, rows): the backward's own product, keys first.

    Written as a different product from the forward's ``_scores`` on purpose:
    XLA merges identical expressions (CSE), and had the backward recomputed
    the forward's very product, XLA would keep the forward's S alive for it,
    (B, H, T, S) per layer, which is exactly what this layer does not keep.
    """
    st = jnp.einsum("bhkd,bqhd->bhkq", kt, q)
    allowed = _allowed(start + jnp.arange(q.shape[1]), kt.shape[2], causal, mask)
    return st if allowed is None else jnp.where(jnp.swapaxes(allowed, 2, 3), st, -jnp.inf)


def _exp_and_sum(s, axis):
    """(e, l): e = exp(s - the row's max) and l = its sum along ``axis`` (kept); a row with no key: e = 0, l = 0."""
    m = jnp.max(s, axis=axis, keepdims=True)
    m = jnp.where(m == -jnp.inf, 0, m)  # a fully masked row: any finite shift; its e is 0 everywhere
    e = jnp.exp(s - m)
    return e, jnp.sum(e, axis=axis, keepdims=True)


def _softmax_t(st):
    """P^T from S^T (B, H, S, rows): per query row, exp(S - max) / sum over its keys; 0 for a row with no key."""
    e, l = _exp_and_sum(st, 2)
    return e / jnp.where(l > 0, l, 1)


def _forward_block(q, kt, vt, start, causal, mask):
    """O (B, rows, H, dh) of a block of query rows; 0 for a row with no key."""
    e, l = _exp_and_sum(_scores(q, kt, start, causal, mask), -1)
    return jnp.einsum("bhqk,bhkd->bqhd", e, vt) / jnp.swapaxes(jnp.where(l > 0, l, 1), 1, 2)


def _backward_block(q, kt, vt, do, start, causal, mask):
    """(dQs (B, rows, H, dh), dK^T, dV^T (B, H, S, dh)) of a block of query rows, P^T recomputed from Q and K."""
    pt = _softmax_t(_scores_t(q, kt, start, causal, mask))  # masked: exp(-inf) = 0
    dvt = jnp.einsum("bhkq,bqhd->bhkd", pt, do)  # dV = P^T dO
    dpt = jnp.einsum("bhkd,bqhd->bhkq", vt, do)  # dP^T = V dO^T
    dst = softmax_vjp(pt, dpt, 2)  # dS = P (dP - D), D_i = sum_k P_ik dP_ik: two passes, no cancellation
    return jnp.einsum("bhkq,bhkd->bqhd", dst, kt), jnp.einsum("bhkq,bqhd->bhkd", dst, q), dvt


def _block_start(i, rows, T):
    """Block i covers rows [start, start + rows); the last block is shifted back to end at row T (it may overlap)."""
    return jnp.minimum(i * rows, T - rows)


def attend(qs, kt, vt, causal, mask, rows):
    """Forward, ``rows`` query rows at a time: (O (B, T, H, dh), qs, kt, vt).

    qs = Q / sqrt(dh) (B, T, H, dh); kt, vt = K^T, V^T (B, H, S, dh). qs, kt
    and vt ride through the loop that reads them and come back out: caching the
    loop's outputs, not its inputs, spares XLA a second copy of each. Rows
    that two blocks share (the last block, shifted back) are computed twice,
    identically.
    """
    T = qs.shape[1]
    if rows >= T:
        return _forward_block(qs, kt, vt, 0, causal, mask), qs, kt, vt

    def body(i, carry):
        qs, kt, vt, o = carry
        start = _block_start(i, rows, T)
        o_b = _forward_block(lax.dynamic_slice_in_dim(qs, start, rows, 1), kt, vt, start, causal, mask)
        return qs, kt, vt, lax.dynamic_update_slice_in_dim(o, o_b, start, 1)

    qs, kt, vt, o = lax.fori_loop(0, -(-T // rows), body, (qs, kt, vt, jnp.zeros_like(qs)))
    return o, qs, kt, vt


def attend_backward(qs, kt, vt, do, causal, mask, rows):
    """(dQs (B, T, H, dh), dK^T, dV^T (B, H, S, dh)): dQs a block of rows at a time, dK and dV summed over blocks.

    Every cached input enters the loop together with dO, and the loop's sums
    start from the first block (not from zeros): nothing here depends on
    forward values alone, so XLA cannot schedule the recomputation, or a
    buffer of zeros, early and hold it through the rest of the forward pass.
    In the last block, rows an earlier block already did get dO = 0 (so dS = 0
    there: no second contribution) and keep their dQ.
    """
    T = qs.shape[1]
    if rows >= T:
        return _backward_block(qs, kt, vt, do, 0, causal, mask)

    def body(i, carry):
        (qs, kt, vt, do), (dq, dkt, dvt) = carry[:4], carry[4:]
        start = _block_start(i, rows, T)
        cut = lambda a: lax.dynamic_slice_in_dim(a, start, rows, 1)  # noqa: E731
        fresh = (start + jnp.arange(rows) >= i * rows)[None, :, None, None]  # rows no earlier block has done
        dq_b, dkt_b, dvt_b = _backward_block(cut(qs), kt, vt, jnp.where(fresh, cut(do), 0), start, causal, mask)
        dq_b = jnp.where(fresh, dq_b, cut(dq))
        first = i == 0  # the sums start from block 0's terms; the initial dkt, dvt are placeholders
        return (*carry[:4], lax.dynamic_update_slice_in_dim(dq, dq_b, start, 1), jnp.where(first, dkt_b, dkt + dkt_b),
                jnp.where(first, dvt_b, dvt + dvt_b))

    # placeholders made from dO (every row of dq is overwritten; dK^T, dV^T are ignored at block 0): a copy of kt
    # or a constant would depend on no backward value, and XLA would make it during the forward pass
    later = jnp.broadcast_to(jnp.swapaxes(do[:, :1, :, :1], 1, 2), kt.shape)
    carry = lax.fori_loop(0, -(-T // rows), body, (qs, kt, vt, do, do, later, later))
    return carry[4:]
