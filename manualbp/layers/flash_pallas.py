"""The attention kernel as Pallas kernels: FlashAttention-2's tiles, forward and backward, each its own pallas_call.

The math is ``flash``'s (same inputs: qs = Q / sqrt(dh) (B, T, H, dh), K^T
and V^T (B, H, S, dh), a key mask), computed tile by tile as in Dao (2023),
"FlashAttention-2", algorithms 1 and 2, with three changes, each for accuracy (below):

Forward (grid: batch x head x query tile; a loop over key tiles): the
online softmax, per query row a running max m, sum l and output O, rescaled
when m grows, and at the end O / l; m and l are kept for the backward:

    S = qs K^T (tile)   m' = max(m, rowmax S)   P~ = exp(S - m')
    l' = e^(m - m') l + rowsum P~     O' = e^(m - m') O + P~ V

Backward, with P recomputed per tile from the cached m and l (never stored):

    P = exp(S - m) / l    dP = dO V^T    dS = P ((dP - D) - D2)
    D_i = sum_j P_ij dP_ij               D2_i = sum_j P_ij (dP_ij - D_i)
    dQs = dS K            dK^T = dS^T qs       dV^T = P^T dO

FlashAttention-2 keeps one number per row, lse = m + log l, and recomputes
P = exp(S - lse): lse's rounding, about eps |m|, is then an absolute error
in S - lse, a relative error eps |m| in every P of the row, the largest
included. With m and l apart, the row's largest score gives S - m
= 0 exactly (S recomputed by the very product of the forward), and P's
error is l's rounding. Two numbers per row instead of one: B H T more.

FlashAttention-2 takes dS = P (dP - D) with D_i = dO_i . O_i, equal in
exact arithmetic. Here D is the row sum of P dP, as in ``flash``: in a row
with one allowed key, P = exp(0) / 1 = 1 exactly, so dS = 0 exactly, as jax.grad gives it;
dO . O and dP, two products rounded apart, would leave ~1e-9 there
(``flash``'s docstring). D2 is ``softmax_vjp``'s second pass (exactly 0 in
exact arithmetic): where one P_ij of a row is near 1 (a saturated row),
dP_ij - D keeps only D's rounding, of about eps |dP|, and that is all of
dS_ij's size (1 - P_ij) |dP|; subtracting the rounded deviation's own mean
D2 leaves errors proportional to (1 - P_ij) |dP| instead.

Measured against a 50+ digit truth (causal, 2 heads, T = 4, D = 8, inputs of
scale 1, 5 and 30, 4 seeds, float64; ratio = the gradient's error / jax.grad's):
FlashAttention-2's P and one-pass dS: p99 2910, max 3320 (dWk 3.0e-2 where
jax.grad is 9.0e-6 off); two passes, P from lse: p99 33, max 58 (dbv 1.3e-14
vs 2.0e-16); two passes, P from m and l: p99 1.12, max 1.60, as the "loop"
kernel (``tests/test_attention_kernels.py``, ``scripts/accuracy_matrix.py``).
It costs two passes over the key
tiles in the dQ kernel before its gradient pass (four products per tile
more: 11 per tile pair against FlashAttention-2's 7).

Three kernels: ``_forward_kernel`` (O, m, l); ``_dq_kernel`` (grid over
query tiles: pass 1 sums D over the key tiles, pass 2 D2, pass 3
accumulates dQs), and ``_dkv_kernel`` (grid over key tiles: accumulates
dK^T and dV^T over the query tiles, reading D and D2). A causal tile pair
with no allowed pair is skipped (the loops' bounds). Masked pairs get S =
-inf, so P = 0 and dS = 0; a row with no allowed key has l = 0: O = 0, and
m = 0, l = 1 are kept (its P is exp(-inf) = 0).

Shapes are padded to whole tiles (T and S to multiples of the tile; on a
GPU, tiles and dh to powers of two >= 16, Triton's): padded keys are
masked, padded query rows get dO = 0, zero columns of dh add exact zeros to
every product. Sums and
the softmax statistics run in float32 (float64 for float64 inputs); products
take the inputs' dtype, as jax's default matmul precision sets it (TF32 for
float32 on a GPU unless a precision is set, like XLA's own products).

On a CPU Pallas has no compiler: the kernels run in its interpreter
(``interpret=True``), which the tests use to check their numerics; it is
slow (each grid cell is a step of a loop).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

TILE = 64  # query rows and keys per tile when the layer's block_size is None
_GPU_MIN = 16  # Triton's smallest dot operand side


def _interpret() -> bool:
    return jax.default_backend() == "cpu"


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _tiles(T, S, dh, block_size, interpret):
    """(query tile, key tile, padded head dim): block_size (or TILE) clipped to the sequence, powers of two >= 16
    on a GPU (Triton's tiles), any size in the interpreter."""
    tile = TILE if block_size is None else block_size
    if interpret:
        return min(tile, T), min(tile, S), dh
    tile = max(_GPU_MIN, _pow2(tile))
    return min(tile, max(_GPU_MIN, _pow2(T))), min(tile, max(_GPU_MIN, _pow2(S))), max(_GPU_MIN, _pow2(dh))


def _pad(a, axis, size, value=0):
    return a if a.shape[axis] == size else jnp.pad(a, [(0, size - a.shape[axis]) if i == axis else (0, 0)
                                                       for i in range(a.ndim)], constant_values=value)


def _acc(dtype):
    """The dtype of sums and softmax statistics: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name):
    params = {}
    if not interpret:
        from jax.experimental.pallas import triton as pltriton

        params["compiler_params"] = pltriton.CompilerParams(num_warps=4, num_stages=2)
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                          interpret=interpret, name=name, **params)


def _dot(a, b, acc):
    return jnp.dot(a, b, preferred_element_type=acc)


def _scores(q, k, rows, cols, keep, causal, acc):
    """S = qs K^T of a tile pair (bq, bk), -inf where the pair is not allowed (a masked or padded key, or causal)."""
    s = _dot(q, k.T, acc)
    allowed = keep[None, :] != 0
    if causal:
        allowed = allowed & (cols[None, :] <= rows[:, None])
    return jnp.where(allowed, s, -jnp.inf)


def _rowsum(p, dp):
    """D_i = sum_j P_ij dP_ij over one key tile (the softmax Jacobian's row term; summed over the tiles)."""
    return jnp.sum(p * dp, axis=1)


def _div(a, b: int):
    """a // b for a grid index a >= 0 (``lax.div``: Triton's lowering takes no // of a program id)."""
    return lax.div(a, jnp.asarray(b, a.dtype))


def _key_tiles(i, bq, bk, n, causal):
    """How many key tiles query tile i reads: all n, or (causal) those up to its last row."""
    return jnp.minimum(n, _div((i + 1) * bq + bk - 1, bk)) if causal else n


def _forward_kernel(q_ref, k_ref, v_ref, keep_ref, o_ref, m_ref, l_ref, *, causal, bk, acc):
    """One query tile: the online softmax over the key tiles -> O (bq, dh) and the row's max m and sum l (bq,)."""
    i = pl.program_id(2)
    bq, dh = q_ref.shape
    q = q_ref[...]
    rows = i * bq + jnp.arange(bq)

    def body(j, carry):
        o, m, l = carry
        keys = pl.ds(j * bk, bk)
        v = v_ref[keys, :]
        s = _scores(q, k_ref[keys, :], rows, j * bk + jnp.arange(bk), keep_ref[keys], causal, acc)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        shift = jnp.where(m_new == -jnp.inf, 0, m_new)  # a row with no key yet: any finite shift, its P~ is 0
        p = jnp.exp(s - shift[:, None])
        scale = jnp.exp(m - shift)
        return scale[:, None] * o + _dot(p.astype(v.dtype), v, acc), m_new, scale * l + jnp.sum(p, axis=1)

    start = (jnp.zeros((bq, dh), acc), jnp.full((bq,), -jnp.inf, acc), jnp.zeros((bq,), acc))
    o, m, l = lax.fori_loop(0, _key_tiles(i, bq, bk, k_ref.shape[0] // bk, causal), body, start)
    has_key = l > 0
    l = jnp.where(has_key, l, 1)
    o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
    m_ref[...] = jnp.where(has_key, m, 0)
    l_ref[...] = l


def _dq_kernel(q_ref, k_ref, v_ref, keep_ref, do_ref, m_ref, l_ref, dq_ref, d_ref, d2_ref, *, causal, bk, acc):
    """One query tile: D = rowsum(P dP) and D2 = rowsum(P (dP - D)) over the key tiles (``softmax_vjp``'s two
    passes), then dQs = sum_j dS_j K_j with dS = P ((dP - D) - D2)."""
    i = pl.program_id(2)
    bq, dh = q_ref.shape
    q, do, m, l = q_ref[...], do_ref[...], m_ref[...], l_ref[...]
    rows = i * bq + jnp.arange(bq)

    def tile(j):
        keys = pl.ds(j * bk, bk)
        k = k_ref[keys, :]
        p = jnp.exp(_scores(q, k, rows, j * bk + jnp.arange(bk), keep_ref[keys], causal, acc) - m[:, None]) / l[:, None]
        return p, _dot(do, v_ref[keys, :].T, acc), k

    def row_sums(j, d):
        p, dp, _ = tile(j)
        return d + _rowsum(p, dp)

    def deviations(j, d2):
        p, dp, _ = tile(j)
        return d2 + _rowsum(p, dp - d[:, None])

    def grads(j, dq):
        p, dp, k = tile(j)
        ds = p * ((dp - d[:, None]) - d2[:, None])
        return dq + _dot(ds.astype(k.dtype), k, acc)

    n = _key_tiles(i, bq, bk, k_ref.shape[0] // bk, causal)
    d = lax.fori_loop(0, n, row_sums, jnp.zeros((bq,), acc))
    d2 = lax.fori_loop(0, n, deviations, jnp.zeros((bq,), acc))
    dq_ref[...] = lax.fori_loop(0, n, grads, jnp.zeros((bq, dh), acc)).astype(dq_ref.dtype)
    d_ref[...] = d
    d2_ref[...] = d2


def _dkv_kernel(q_ref, k_ref, v_ref, keep_ref, do_ref, m_ref, l_ref, d_ref, d2_ref, dk_ref, dv_ref, *, causal, bq,
                acc):
    """One key tile: dK^T = sum_i dS_i^T qs_i and dV^T = sum_i P_i^T dO_i over the query tiles that see it."""
    j = pl.program_id(2)
    bk, dh = k_ref.shape
    k, v, keep = k_ref[...], v_ref[...], keep_ref[...]
    cols = j * bk + jnp.arange(bk)

    def body(i, carry):
        dk, dv = carry
        queries = pl.ds(i * bq, bq)
        q, do = q_ref[queries, :], do_ref[queries, :]
        # S in the forward's orientation (qs K^T, the same product), so that P is the forward's to the bit
        s = _scores(q, k, i * bq + jnp.arange(bq), cols, keep, causal, acc)
        p = jnp.exp(s - m_ref[queries][:, None]) / l_ref[queries][:, None]
        ds = p * ((_dot(do, v.T, acc) - d_ref[queries][:, None]) - d2_ref[queries][:, None])
        return dk + _dot(ds.T.astype(q.dtype), q, acc), dv + _dot(p.T.astype(do.dtype), do, acc)

    first = _div(j * bk, bq) if causal else 0  # causal: the query tiles before it see none of its keys
    zeros = jnp.zeros((bk, dh), acc)
    dk, dv = lax.fori_loop(first, q_ref.shape[0] // bq, body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _layout(qs, kt, vt, mask, block_size):
    """Padded (qs, kt, vt, keep) and the tiles: keep (B, S') int32 is 1 for a real, allowed key."""
    interpret = _interpret()
    (B, T, _, dh), S = qs.shape, kt.shape[2]
    bq, bk, dp = _tiles(T, S, dh, block_size, interpret)
    tp, sp = -(-T // bq) * bq, -(-S // bk) * bk
    keep = jnp.ones((B, S), jnp.int32) if mask is None else mask.astype(jnp.int32)
    return (_pad(_pad(qs, 1, tp), 3, dp), _pad(_pad(kt, 2, sp), 3, dp), _pad(_pad(vt, 2, sp), 3, dp),
            _pad(keep, 1, sp), bq, bk, interpret)


def _specs(B, H, tp, sp, dp, bq, bk):
    """BlockSpecs over the grid (batch, head, tile): a query tile, all queries, a key tile, all keys, rows' stats."""
    return {
        "q_tile": pl.BlockSpec((None, bq, None, dp), lambda b, h, i: (b, i, h, 0)),
        "q_all": pl.BlockSpec((None, tp, None, dp), lambda b, h, i: (b, 0, h, 0)),
        "k_tile": pl.BlockSpec((None, None, bk, dp), lambda b, h, j: (b, h, j, 0)),
        "k_all": pl.BlockSpec((None, None, sp, dp), lambda b, h, i: (b, h, 0, 0)),
        "keep_tile": pl.BlockSpec((None, bk), lambda b, h, j: (b, j)),
        "keep_all": pl.BlockSpec((None, sp), lambda b, h, i: (b, 0)),
        "row_tile": pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
        "row_all": pl.BlockSpec((None, None, tp), lambda b, h, j: (b, h, 0)),
    }


def attend(qs, kt, vt, causal, mask, block_size):
    """Forward: (O (B, T, H, dh), the row statistics (m, l), each (B, H, T) in float32 or float64), tile by tile."""
    (B, T, H, dh), acc = qs.shape, _acc(qs.dtype)
    q, k, v, keep, bq, bk, interpret = _layout(qs, kt, vt, mask, block_size)
    tp, sp, dp = q.shape[1], k.shape[2], q.shape[3]
    sp_ = _specs(B, H, tp, sp, dp, bq, bk)
    rows = jax.ShapeDtypeStruct((B, H, tp), acc)
    o, m, l = _call(functools.partial(_forward_kernel, causal=causal, bk=bk, acc=acc), (B, H, tp // bq),
                    [sp_["q_tile"], sp_["k_all"], sp_["k_all"], sp_["keep_all"]],
                    [sp_["q_tile"], sp_["row_tile"], sp_["row_tile"]],
                    [jax.ShapeDtypeStruct(q.shape, q.dtype), rows, rows], interpret,
                    "manualbp_attention_forward")(q, k, v, keep)
    return o[:, :T, :, :dh], (m[:, :, :T], l[:, :, :T])


def attend_backward(qs, kt, vt, stats, do, causal, mask, block_size):
    """(dQs (B, T, H, dh), dK^T, dV^T (B, H, S, dh)): the dQ kernel (with D and D2), then the dK/dV kernel."""
    (B, T, H, dh), S, acc = qs.shape, kt.shape[2], _acc(qs.dtype)
    q, k, v, keep, bq, bk, interpret = _layout(qs, kt, vt, mask, block_size)
    tp, sp, dp = q.shape[1], k.shape[2], q.shape[3]
    do = _pad(_pad(do, 1, tp), 3, dp)  # padded rows: dO = 0, so they add nothing to dK, dV
    m, l = _pad(stats[0], 2, tp), _pad(stats[1], 2, tp, 1)  # padded rows: P finite (m = 0, l = 1), dO = 0
    sp_ = _specs(B, H, tp, sp, dp, bq, bk)
    rows = jax.ShapeDtypeStruct((B, H, tp), acc)
    dq, d, d2 = _call(functools.partial(_dq_kernel, causal=causal, bk=bk, acc=acc), (B, H, tp // bq),
                      [sp_["q_tile"], sp_["k_all"], sp_["k_all"], sp_["keep_all"], sp_["q_tile"], sp_["row_tile"],
                       sp_["row_tile"]],
                      [sp_["q_tile"], sp_["row_tile"], sp_["row_tile"]],
                      [jax.ShapeDtypeStruct(q.shape, q.dtype), rows, rows], interpret,
                      "manualbp_attention_dq")(q, k, v, keep, do, m, l)
    dk, dv = _call(functools.partial(_dkv_kernel, causal=causal, bq=bq, acc=acc), (B, H, sp // bk),
                   [sp_["q_all"], sp_["k_tile"], sp_["k_tile"], sp_["keep_tile"], sp_["q_all"], sp_["row_all"],
                    sp_["row_all"], sp_["row_all"], sp_["row_all"]],
                   [sp_["k_tile"], sp_["k_tile"]],
                   [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)], interpret,
                   "manualbp_attention_dkv")(q, k, v, keep, do, m, l, d, d2)
    return dq[:, :T, :, :dh], dk[:, :, :S, :dh], dv[:, :, :S, :dh]

