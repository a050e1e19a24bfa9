"""Multi-head scaled dot-product attention, with a backward that keeps no (T x S) probability matrix.

Per head (dropping the batch and head indices), with queries from x (T, D)
and keys/values from the context c (S, Dc) (c = x for self-attention):

    Q = x Wq + bq,  K = c Wk,  V = c Wv + bv                (T, dh), (S, dh), (S, dh)
    S_ij = Q_i . K_j / sqrt(dh)   on the allowed pairs (i, j), -inf elsewhere
    lse_i = log sum_j exp(S_ij)    P_ij = exp(S_ij - lse_i)  O = P V       (T, dh)
    y = concat_heads(O) Wo + bo                                             (T, D)

The backward, from dO = (dy Wo^T) split into heads (Dao et al., 2022,
"FlashAttention", section 3.1 and appendix B.2):

    dV = P^T dO                     dP = dO V^T
    dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)      (the softmax Jacobian, row by row)
          = P_ij (dP_ij - D_i),     D_i = sum_k P_ik (dO_i . V_k) = dO_i . O_i
    dQ = dS K / sqrt(dh)            dK = dS^T Q / sqrt(dh)

The identity D_i = rowsum(dO * O) turns a reduction over the S keys of the
(T, S) matrix P * dP into one over the dh features of O, which is cached
anyway. So what crosses from the forward to the backward is x, c, Q, K, V,
O and the per-row log-sum-exp lse (B, heads, T): never P. The backward
recomputes P = exp(Q K^T / sqrt(dh) - lse) exactly as the forward made it,
a block of query rows at a time, so its temporaries are (B, heads, rows, S)
for one block: memory O(B T D + B heads T), where jax.grad of the textbook
forward keeps P, (B, heads, T, S), for every layer until the backward.

Masks. A pair (i, j) is allowed when j <= i (``causal``) and the key j is
not padding (``key_mask``: input mask (B, S), True = a real key). A masked
pair gets P_ij = 0 exactly (exp(-inf)), hence dS_ij = 0: no gradient reaches
its score. A query row with NO allowed key (e.g. an all-padding sequence) is
defined to have P_i = 0 and O_i = 0, so y_i = bo, and it passes no gradient
through the attention; its lse is +inf. Its projections still get the
gradient of y_i = bo, i.e. only dbo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from manualbp.layers.base import Layer, check_array, check_dtype_match, check_param, check_params, describe

_BLOCK_BYTES = 4 << 20  # one (B, heads, rows, S) temporary per block: well inside cache, far below glibc's mmap threshold


def _rows_per_block(B, H, T, S, itemsize, block_size):
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


def _forward_block(q, kt, vt, start, causal, mask):
    """(O (B, rows, H, dh), lse (B, H, rows)) of a block of query rows; lse = +inf for a row with no key."""
    s = _scores(q, kt, start, causal, mask)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(m == -jnp.inf, 0, m)  # a fully masked row: any finite shift; its e is 0 everywhere
    e = jnp.exp(s - m)
    l = jnp.sum(e, axis=-1, keepdims=True)
    safe = jnp.where(l > 0, l, 1)
    o = jnp.einsum("bhqk,bhkd->bqhd", e, vt) / jnp.swapaxes(safe, 1, 2)
    return o, jnp.where(l > 0, m + jnp.log(safe), jnp.inf)[..., 0]


def _backward_block(q, kt, vt, do, lse, delta, start, causal, mask):
    """(dQs (B, rows, H, dh), dK^T, dV^T (B, H, S, dh)) of a block of query rows, P^T recomputed from lse."""
    pt = jnp.exp(_scores_t(q, kt, start, causal, mask) - lse[:, :, None, :])  # masked: exp(-inf) = 0
    dvt = jnp.einsum("bhkq,bqhd->bhkd", pt, do)  # dV = P^T dO
    dpt = jnp.einsum("bhkd,bqhd->bhkq", vt, do)  # dP^T = V dO^T
    dst = pt * (dpt - delta[:, :, None, :])  # dS = P (dP - rowsum(dO O)), transposed
    return jnp.einsum("bhkq,bhkd->bqhd", dst, kt), jnp.einsum("bhkq,bqhd->bhkd", dst, q), dvt


def _block_start(i, rows, T):
    """Block i covers rows [start, start + rows); the last block is shifted back to end at row T (it may overlap)."""
    return jnp.minimum(i * rows, T - rows)


def attend(qs, kt, vt, causal, mask, rows):
    """Forward, ``rows`` query rows at a time: (O (B, T, H, dh), lse (B, H, T), qs, kt, vt).

    qs = Q / sqrt(dh) (B, T, H, dh); kt, vt = K^T, V^T (B, H, S, dh). qs, kt
    and vt ride through the loop that reads them and come back out: caching the
    loop's outputs, not its inputs, spares XLA a second copy of each. Rows
    that two blocks share (the last block, shifted back) are computed twice,
    identically.
    """
    B, T, H, _ = qs.shape
    if rows >= T:
        return (*_forward_block(qs, kt, vt, 0, causal, mask), qs, kt, vt)

    def body(i, carry):
        qs, kt, vt, o, lse = carry
        start = _block_start(i, rows, T)
        o_b, lse_b = _forward_block(lax.dynamic_slice_in_dim(qs, start, rows, 1), kt, vt, start, causal, mask)
        return (qs, kt, vt, lax.dynamic_update_slice_in_dim(o, o_b, start, 1),
                lax.dynamic_update_slice_in_dim(lse, lse_b, start, 2))

    o, lse = jnp.zeros_like(qs), jnp.zeros((B, H, T), qs.dtype)
    qs, kt, vt, o, lse = lax.fori_loop(0, -(-T // rows), body, (qs, kt, vt, o, lse))
    return o, lse, qs, kt, vt


def attend_backward(qs, kt, vt, o, lse, do, causal, mask, rows):
    """(dQs (B, T, H, dh), dK^T, dV^T (B, H, S, dh)): dQs a block of rows at a time, dK and dV summed over blocks.

    Every cached input enters the loop together with dO, and the loop's sums
    start from the first block (not from zeros): nothing here depends on
    forward values alone, so XLA cannot schedule the recomputation, or a
    buffer of zeros, early and hold it through the rest of the forward pass.
    In the last block, rows an earlier block already did get dO = 0 and
    D = 0 (so dS = 0 there: no second contribution) and keep their dQ.
    """
    T = qs.shape[1]
    delta = jnp.einsum("bthd,bthd->bht", do, o)  # D_i = dO_i . O_i  (B, H, T)
    if rows >= T:
        return _backward_block(qs, kt, vt, do, lse, delta, 0, causal, mask)

    def body(i, carry):
        (qs, kt, vt, do, lse, delta), (dq, dkt, dvt) = carry[:6], carry[6:]
        start = _block_start(i, rows, T)
        cut = lambda a, axis=1: lax.dynamic_slice_in_dim(a, start, rows, axis)  # noqa: E731
        fresh = start + jnp.arange(rows) >= i * rows  # rows no earlier block has done
        do_b = jnp.where(fresh[None, :, None, None], cut(do), 0)
        delta_b = jnp.where(fresh[None, None, :], cut(delta, 2), 0)
        dq_b, dkt_b, dvt_b = _backward_block(cut(qs), kt, vt, do_b, cut(lse, 2), delta_b, start, causal, mask)
        dq_b = jnp.where(fresh[None, :, None, None], dq_b, cut(dq))
        first = i == 0  # the sums start from block 0's terms; the initial dkt, dvt are placeholders
        return (*carry[:6], lax.dynamic_update_slice_in_dim(dq, dq_b, start, 1), jnp.where(first, dkt_b, dkt + dkt_b),
                jnp.where(first, dvt_b, dvt + dvt_b))

    # placeholders made from dO (every row of dq is overwritten; dK^T, dV^T are ignored at block 0): a copy of kt
    # or a constant would depend on no backward value, and XLA would make it during the forward pass
    later = jnp.broadcast_to(delta[:, :, :1, None], kt.shape)
    carry = lax.fori_loop(0, -(-T // rows), body, (qs, kt, vt, do, lse, delta, do, later, later))
    return carry[6:]


def _heads(a, H):
    """(B, T, H dh) -> (B, T, H, dh): a reshape, no copy."""
    return a.reshape(*a.shape[:2], H, a.shape[2] // H)


def _merge(a):
    """(B, T, H, dh) -> (B, T, H dh)."""
    return a.reshape(*a.shape[:2], -1)


def _bias(b, ndim):
    return b.reshape((1,) * (ndim - 1) + b.shape)


def _flat(a):
    """(B, T, K) -> (B T, K): every (sequence, position) is one row of a single matmul."""
    return a.reshape(-1, a.shape[-1])


@dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product attention (module docstring: forward, backward, masks).

    Attributes:
      num_heads: H.
      head_dim: dh; default D / H (then D must be divisible by H).
      causal: query i attends to keys j <= i only (self-attention).
      use_bias: add bq, bv, bo (K has no bias: see below).
      cross: the input is (x, context, ...): queries from x (B, T, D), keys and
        values from context (B, S, Dc). Otherwise context = x.
      key_mask: the input ends with a bool mask (B, S), True = a real key.
      block_size: query rows per block in forward and backward; None picks
        rows so that one (B, H, rows, S) temporary stays within 4 MiB.

    Input: x (B, T, D), or the tuple (x, [context], [mask]) as set by
    ``cross`` and ``key_mask``; output y (B, T, D). dx is x's structure:
    (dx, [dcontext], [None]). Params: Wq (D, H dh), Wk and Wv (Dc, H dh),
    Wo (H dh, D), and with ``use_bias`` bq, bv (H dh,), bo (D,); weights
    normal with std 1/sqrt(fan_in), biases zero.

    No key bias: a bias bk would add the same Q_i . bk to every score of row
    i, which the softmax cancels, so dL/dbk = 0 identically (a parameter that
    cannot learn, whose comparison rows would compare rounding noise).
    """

    num_heads: int
    head_dim: int | None = None
    causal: bool = False
    use_bias: bool = True
    cross: bool = False
    key_mask: bool = False
    block_size: int | None = None

    def __post_init__(self):
        for field in ("num_heads", "head_dim", "block_size"):
            v = getattr(self, field)
            if (v is not None or field == "num_heads") and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"MultiHeadAttention: {field} must be a positive int, got {v!r}")
        for field in ("causal", "use_bias", "cross", "key_mask"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"MultiHeadAttention: {field} must be a bool, got {getattr(self, field)!r}")
        if self.causal and self.cross:
            raise ValueError("MultiHeadAttention: causal applies to self-attention (a query and a key share "
                             "positions); it cannot be combined with cross=True")

    def _keys(self):
        w = ("Wq", "Wk", "Wv", "Wo")
        return w + ("bq", "bv", "bo") if self.use_bias else w

    def _dh(self, D):
        if self.head_dim is not None:
            return self.head_dim
        if D % self.num_heads:
            raise ValueError(
                f"MultiHeadAttention: features D = {D} is not divisible by num_heads = {self.num_heads}; "
                "change num_heads or pass head_dim"
            )
        return D // self.num_heads

    def _shapes(self, input_shape):
        """((T, D), (S, Dc)) from ``init``'s input shape: (T, D), or ((T, D), [(S, Dc)], [(S,)])."""
        n = 1 + self.cross + self.key_mask
        parts = (tuple(input_shape),) if n == 1 else tuple(input_shape)
        if len(parts) != n or any(not isinstance(p, (tuple, list)) for p in parts):
            raise ValueError(f"MultiHeadAttention: expected an input shape with {n} part(s) "
                             f"((T, D), [(S, Dc)], [(S,)]) for cross={self.cross}, key_mask={self.key_mask}, "
                             f"got {input_shape!r}")
        xs = tuple(parts[0])
        cs = tuple(parts[1]) if self.cross else xs
        if len(xs) != 2 or len(cs) != 2:
            raise ValueError(f"MultiHeadAttention: expected sequences of shape (T, D) (batch excluded), got {input_shape!r}")
        return xs, cs

    def output_shape(self, input_shape):
        return self._shapes(input_shape)[0]

    def init(self, key, input_shape, dtype=jnp.float32):
        (_, D), (_, Dc) = self._shapes(input_shape)
        inner = self.num_heads * self._dh(D)
        kq, kk, kv, ko = jax.random.split(key, 4)
        params = {"Wq": jax.random.normal(kq, (D, inner), dtype) / math.sqrt(D),
                  "Wk": jax.random.normal(kk, (Dc, inner), dtype) / math.sqrt(Dc),
                  "Wv": jax.random.normal(kv, (Dc, inner), dtype) / math.sqrt(Dc),
                  "Wo": jax.random.normal(ko, (inner, D), dtype) / math.sqrt(inner)}
        if self.use_bias:
            params.update(bq=jnp.zeros((inner,), dtype), bv=jnp.zeros((inner,), dtype), bo=jnp.zeros((D,), dtype))
        return params, self.output_shape(input_shape)

    def _unpack(self, params, inputs):
        """(x, context, mask) after checking every shape and dtype against the params."""
        n = 1 + self.cross + self.key_mask
        if n == 1:
            if isinstance(inputs, (tuple, list)):
                raise TypeError("MultiHeadAttention: got a tuple input but cross=False and key_mask=False; "
                                "pass x of shape (B, T, D)")
            inputs = (inputs,)
        elif not isinstance(inputs, (tuple, list)) or len(inputs) != n:
            want = ", ".join(["x"] + ["context"] * self.cross + ["mask"] * self.key_mask)
            raise TypeError(f"MultiHeadAttention: with cross={self.cross}, key_mask={self.key_mask} expected the "
                            f"input as a tuple ({want}), got {describe(inputs)}")
        x = inputs[0]
        c = inputs[1] if self.cross else x
        mask = inputs[-1] if self.key_mask else None
        check_array(self, x, ndim=3)
        check_array(self, c, what="context", ndim=3)
        (B, T, D), (Bc, S, Dc) = x.shape, c.shape
        if Bc != B:
            raise ValueError(f"MultiHeadAttention: x has batch {B} but context has batch {Bc} (x {tuple(x.shape)}, "
                             f"context {tuple(c.shape)})")
        if T == 0 or S == 0:
            raise ValueError(f"MultiHeadAttention: expected at least one query and one key, got x of shape "
                             f"{tuple(x.shape)} and context of shape {tuple(c.shape)}")
        check_dtype_match(self, c, x, what="context", wname="x")
        inner = self.num_heads * self._dh(D)
        check_params(self, params, self._keys())
        for name, shape, why in (("Wq", (D, inner), "(D, heads * head_dim)"), ("Wk", (Dc, inner), "(Dc, heads * head_dim)"),
                                 ("Wv", (Dc, inner), "(Dc, heads * head_dim)"), ("Wo", (inner, D), "(heads * head_dim, D)")):
            check_param(self, params, name, shape, like=x, why=f"{why} = {shape}")
        if self.use_bias:
            for name, size in (("bq", inner), ("bv", inner), ("bo", D)):
                check_param(self, params, name, (size,), like=x)
        if mask is not None:
            if not hasattr(mask, "dtype") or mask.dtype != jnp.bool_:
                raise TypeError(f"MultiHeadAttention: expected a key mask of dtype bool (True = a real key), got "
                                f"{describe(mask)}; e.g. mask = lengths[:, None] > jnp.arange(S)")
            if tuple(mask.shape) != (B, S):
                raise ValueError(f"MultiHeadAttention: expected a key mask of shape ({B}, {S}) (batch, keys), "
                                 f"got {tuple(mask.shape)}")
        return x, c, mask

    def _project(self, params, a, w, b):
        y = a @ params[w]
        return y + _bias(params[b], y.ndim) if self.use_bias and b is not None else y

    def forward(self, params, x):
        """x: (B, T, D) (or the tuple of the class docstring) -> y: (B, T, D).

        cache: (x, context or None, Q / sqrt(dh) (B, T, H, dh), K^T and V^T (B, H, S, dh), O (B, T, H dh),
        lse (B, H, T), mask).
        """
        x, c, mask = self._unpack(params, x)
        H = self.num_heads
        B, T, D = x.shape
        dh = self._dh(D)
        qs = _heads(self._project(params, x, "Wq", "bq"), H) * jnp.asarray(1 / math.sqrt(dh), x.dtype)
        kt = jnp.swapaxes(_heads(self._project(params, c, "Wk", None), H), 1, 2)
        vt = jnp.swapaxes(_heads(self._project(params, c, "Wv", "bv"), H), 1, 2)
        rows = _rows_per_block(B, H, T, c.shape[1], x.dtype.itemsize, self.block_size)
        o, lse, qs, kt, vt = attend(qs, kt, vt, self.causal, mask, rows)
        om = _merge(o)
        y = self._project(params, om, "Wo", "bo")
        return y, (x, c if self.cross else None, qs, kt, vt, om, lse, mask)

    def backward(self, params, cache, dy):
        """Output projection (BP2-BP4 of a Dense), the attention backward of the module docstring, then Q/K/V.

        .. math::
            dW_o = O^T dy,\\; db_o = \\sum dy,\\; dO = dy W_o^T;\\quad
            dV = P^T dO,\\; dS = P (dO V^T - \\mathrm{rowsum}(dO \\odot O)),\\;
            dQ = dS K / \\sqrt{d_h},\\; dK = dS^T Q / \\sqrt{d_h}
            dW_q = x^T dQ,\\; dW_k = c^T dK,\\; dW_v = c^T dV,\\;
            dx = dQ W_q^T \\,[+ dK W_k^T + dV W_v^T \\text{ when } c = x]

        P is recomputed from Q, K and the cached lse, a block of query rows at a
        time. dy: (B, T, D); returns (dparams, dx) with dx of the input's structure.
        """
        x, c, qs, kt, vt, om, lse, mask = cache
        cross = c is not None
        c = c if cross else x
        H = self.num_heads
        B, T, D = x.shape
        dh = qs.shape[-1]
        grads = {"Wo": _flat(om).T @ _flat(dy)}
        do = _heads(dy @ params["Wo"].T, H)
        rows = _rows_per_block(B, H, T, c.shape[1], x.dtype.itemsize, self.block_size)
        dqs, dkt, dvt = attend_backward(qs, kt, vt, _heads(om, H), lse, do, self.causal, mask, rows)
        dq = _merge(dqs) * jnp.asarray(1 / math.sqrt(dh), x.dtype)  # Q = x Wq + bq enters S through Q / sqrt(dh)
        dk, dv = _merge(jnp.swapaxes(dkt, 1, 2)), _merge(jnp.swapaxes(dvt, 1, 2))
        grads.update(Wq=_flat(x).T @ _flat(dq), Wk=_flat(c).T @ _flat(dk), Wv=_flat(c).T @ _flat(dv))
        if self.use_bias:
            grads.update(bq=jnp.sum(_flat(dq), axis=0), bv=jnp.sum(_flat(dv), axis=0), bo=jnp.sum(_flat(dy), axis=0))
        dx = dq @ params["Wq"].T
        dc = dk @ params["Wk"].T + dv @ params["Wv"].T
        if not cross:
            dx = dx + dc
            return grads, ((dx, None) if self.key_mask else dx)
        return grads, ((dx, dc, None) if self.key_mask else (dx, dc))
