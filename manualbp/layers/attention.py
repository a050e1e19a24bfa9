"""Multi-head scaled dot-product attention, with a backward that keeps no (T x S) probability matrix.

Per head, with queries from x (T, D) and keys/values from the context c
(S, Dc) (c = x for self-attention):

    Q = x Wq + bq,  K = c Wk,  V = c Wv + bv                (T, dh), (S, dh), (S, dh)
    O = softmax(Q K^T / sqrt(dh), masked) V                 (T, dh)       (``flash``)
    y = concat_heads(O) Wo + bo                             (T, D)

The attention core and its backward, dS = P (dP - rowsum(P dP)) with P
recomputed from Q and K a block of query rows at a time, are derived in
``flash``; around it the projections are Dense layers on every (sequence,
position) row. What crosses from the forward to the backward is x, c, Q, K,
V and O: O(B T D) memory, where jax.grad of the textbook forward keeps the
probabilities P, (B, heads, T, S), of every layer.

Masks. A pair (i, j) is allowed when j <= i (``causal``) and the key j is
not padding (``key_mask``: input mask (B, S), True = a real key). A masked
pair gets probability exactly 0 and passes no gradient. A query row with NO
allowed key (e.g. an all-padding sequence) is defined to have O_i = 0, so
y_i = bo, and passes no gradient through the attention (only dbo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from manualbp.layers import flash
from manualbp.layers.base import (
    Layer,
    check_array,
    check_dtype_match,
    check_dy,
    check_param,
    check_params,
    check_positive_int,
    describe,
)


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
        rows so that one (B, H, rows, S) temporary stays within 4 MiB, and at
        most half of T (so the backward is a loop, see ``flash``). A block_size
        >= T runs one block without a loop, and XLA may then compute the
        backward's (B, H, S, T) products during the forward pass and hold them.
        With kernel="batched": rows per step; "pallas": the tile's query rows
        and keys.
      kernel: how the attention core runs (``flash``): "loop" (blocks of rows
        in a loop), "batched" (few large steps sized from the device's memory,
        a causal step skipping the keys after its rows), "pallas"
        (FlashAttention-2's fused tiles as Pallas kernels, ``flash_pallas``;
        interpreted on a CPU, slow there), or "auto" ("batched" on an
        accelerator; on a CPU "batched" for causal attention of T >= 256,
        where it measured faster, else "loop"). The same math and the same
        cache; a report judges each alike.

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
    kernel: str = "auto"

    def __post_init__(self):
        for field in ("num_heads", "head_dim", "block_size"):
            if getattr(self, field) is not None or field == "num_heads":
                check_positive_int("MultiHeadAttention", field, getattr(self, field))
        for field in ("causal", "use_bias", "cross", "key_mask"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"MultiHeadAttention: {field} must be a bool, got {getattr(self, field)!r}")
        if self.kernel not in flash.KERNELS:
            raise ValueError(f"MultiHeadAttention: kernel must be one of {flash.KERNELS}, got {self.kernel!r}")
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
        if B == 0 or T == 0 or S == 0:
            raise ValueError(f"MultiHeadAttention: expected at least one sequence, query and key (B, T, S >= 1), "
                             f"got x of shape {tuple(x.shape)} and context of shape {tuple(c.shape)}")
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

        cache: (x, context or None, the kernel's residuals (Q / sqrt(dh) (B, T, H, dh), K^T and V^T
        (B, H, S, dh), and for "pallas" the rows' max and sum of exponentials (B, H, T) each), O (B, T, H dh), mask).
        """
        x, c, mask = self._unpack(params, x)
        H = self.num_heads
        dh = self._dh(x.shape[2])
        qs = _heads(self._project(params, x, "Wq", "bq"), H) * jnp.asarray(1 / math.sqrt(dh), x.dtype)
        kt = jnp.swapaxes(_heads(self._project(params, c, "Wk", None), H), 1, 2)
        vt = jnp.swapaxes(_heads(self._project(params, c, "Wv", "bv"), H), 1, 2)
        o, residuals = flash.forward(self.kernel, qs, kt, vt, self.causal, mask, self.block_size)
        om = _merge(o)
        y = self._project(params, om, "Wo", "bo")
        return y, (x, c if self.cross else None, residuals, om, mask)

    def backward(self, params, cache, dy):
        """Output projection (BP2-BP4 of a Dense), the attention backward of the module docstring, then Q/K/V.

        .. math::
            dW_o = O^T dy,\\; db_o = \\sum dy,\\; dO = dy W_o^T;\\quad
            dV = P^T dO,\\; dP = dO V^T,\\; dS = P (dP - \\mathrm{rowsum}(P \\odot dP)),\\;
            dQ = dS K / \\sqrt{d_h},\\; dK = dS^T Q / \\sqrt{d_h}
            dW_q = x^T dQ,\\; dW_k = c^T dK,\\; dW_v = c^T dV,\\;
            dx = dQ W_q^T \\,[+ dK W_k^T + dV W_v^T \\text{ when } c = x]

        P is recomputed from Q and K, a block of query rows at a time. dy: (B, T, D); returns (dparams,
        dx) with dx of the input's structure.
        """
        x, c, residuals, om, mask = cache
        check_dy(self, dy, x.shape, x.dtype)
        cross = c is not None
        c = c if cross else x
        dh = residuals[0].shape[-1]
        grads = {"Wo": _flat(om).T @ _flat(dy)}
        do = _heads(dy @ params["Wo"].T, self.num_heads)
        dqs, dkt, dvt = flash.backward(self.kernel, residuals, do, self.causal, mask, self.block_size)
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
