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

Three kernels compute the same blocks (``forward``/``backward`` dispatch on
the layer's ``kernel``):

- "loop": the blocks above, one after another in a ``lax.fori_loop``, each
  small enough (4 MiB) to stay in a CPU's cache; a CPU runs them as fast as
  one big product.
- "batched": few large steps (``rows_per_step``: T / 4 rows, fewer where one
  (B, H, rows, S) temporary would pass the device's memory budget,
  ``memory_budget``), each one product over all the query rows of its blocks
  at once: a GPU runs a loop of small products far below its peak (measured
  on an H100 at T = 1024: 5.3 TFLOP/s against 12.7 for jax.grad's one pass).
  Each step is its own branch of a ``lax.switch`` inside the loop, so it has
  static shapes and a causal step reads only the keys up to its last row
  (the keys after it are masked for every row of the step): with n steps,
  (n + 1) / 2n of the products. The loop keeps the steps one after another
  and keeps XLA from scheduling them in the forward pass, as above (unrolled,
  XLA's CPU scheduler ran the steps side by side and held all their
  temporaries at once, ``optimization_barrier``s or not). Each step runs the
  same ``_forward_block`` and ``_backward_block`` as the loop; more than
  _MAX_STEPS steps run as "loop" with the budget's block size.
- "pallas": ``flash_pallas``, FlashAttention-2's fused tiles as Pallas kernels.

"auto" is "batched" on an accelerator; on a CPU, "batched" for causal
attention of T >= 256 and "loop" otherwise (``kernel_for``, measured there).
"""

from __future__ import annotations

import jax
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


KERNELS = ("auto", "loop", "batched", "pallas")
_STEPS = 4  # the batched kernel's steps where the memory budget allows (causal: (n + 1) / 2n of the products)
_MAX_STEPS = 8  # steps with a branch each at most (compile time grows with them); beyond, ``attend``'s loop
_CPU_BATCHED_T = 256  # a CPU's "auto" takes "batched" for causal attention from this T (its steps skip masked keys)


def kernel_for(kernel: str, causal: bool = False, T: int = 0) -> str:
    """The kernel that ``kernel`` names. "auto": "batched" on an accelerator; on a CPU, "batched" for causal
    attention of T >= 256, else "loop".

    Measured on the 2-core CPU (B = 8, D = 128, 4 heads, float32, interleaved in one run, three runs at a load
    average of 17 from other processes; ``manualbp bench --model attention --kernels loop,batched``), causal,
    batched against loop: 0.91-1.01x the time at T = 128, 0.46-0.66x at 256, 0.48-0.79x at 512 (its steps read
    only the keys up to their last row), 0.98-1.00x at 1024 (32 steps of the CPU's 4 MiB: run as the loop). Not
    causal there is no product to skip (1.2x at T = 128). Its compile takes 2-4x the loop's (a branch per step).
    """
    if kernel != "auto":
        return kernel
    if jax.default_backend() != "cpu":
        return "batched"
    return "batched" if causal and T >= _CPU_BATCHED_T else "loop"


def memory_budget() -> int:
    """Bytes one (B, H, rows, S) temporary of the batched kernel may take on the default device.

    A CPU: the loop's 4 MiB (cache-sized). An accelerator: 1/64 of the memory
    it reports (a step keeps about four such temporaries alive: S^T, P^T, dP^T,
    dS^T), or 256 MiB where it reports none.
    """
    device = jax.devices()[0]
    if device.platform == "cpu":
        return _BLOCK_BYTES
    limit = (device.memory_stats() or {}).get("bytes_limit")
    return max(_BLOCK_BYTES, limit // 64) if limit else 256 << 20


def rows_per_step(B, H, T, S, itemsize, block_size, budget=None):
    """Query rows per step of the batched kernel: ``block_size``; or T / 4 (rounded up) where one (B, H, rows, S)
    temporary of that many rows fits the memory budget, else as many rows as fit."""
    if block_size is not None:
        return min(block_size, T)
    fit = max(1, (memory_budget() if budget is None else budget) // (B * H * S * itemsize))
    return min(-(-T // _STEPS), fit)


def _steps(T, rows, S, causal):
    """(start, stop, keys) of each step: rows [start, stop), and the keys [0, keys) any of them may attend to."""
    return [(a, min(a + rows, T), min(a + rows, T) if causal else S) for a in range(0, T, rows)]


def _keys(kt, vt, mask, keys):
    """K^T, V^T and the key mask cut to the first ``keys`` keys."""
    return kt[:, :, :keys], vt[:, :, :keys], None if mask is None else mask[:, :keys]


def _switched(T, rows):
    """Whether the batched kernel gives each step its own branch (at most _MAX_STEPS), or runs ``attend``'s loop."""
    return 1 < -(-T // rows) <= _MAX_STEPS


def attend_batched(qs, kt, vt, causal, mask, rows):
    """Forward of the batched kernel: (O (B, T, H, dh), qs, kt, vt), ``rows`` query rows per step.

    One loop over the steps, which ``lax.switch`` sends to the step's own
    branch: static shapes per step, so a causal step reads only the keys up
    to its last row. The loop runs the steps one after another (their
    temporaries never live at once), and qs, kt and vt ride through it as in
    ``attend``. One step, or more than _MAX_STEPS, run as ``attend``.
    """
    T = qs.shape[1]
    if not _switched(T, rows):
        return attend(qs, kt, vt, causal, mask, rows)

    def branch(a, b, keys):
        def run(carry):
            qs, kt, vt, o = carry
            kt_a, vt_a, mask_a = _keys(kt, vt, mask, keys)
            return qs, kt, vt, o.at[:, a:b].set(_forward_block(qs[:, a:b], kt_a, vt_a, a, causal, mask_a))
        return run

    branches = [branch(*step) for step in _steps(T, rows, kt.shape[2], causal)]
    qs, kt, vt, o = lax.fori_loop(0, len(branches), lambda i, c: lax.switch(i, branches, c),
                                  (qs, kt, vt, jnp.zeros_like(qs)))
    return o, qs, kt, vt


def attend_backward_batched(qs, kt, vt, do, causal, mask, rows):
    """(dQs, dK^T, dV^T) of the batched kernel: dQs step by step, dK and dV summed over steps.

    As ``attend_backward``, every cached input enters the loop together with
    dO (nothing runs before dO exists) and the sums start from the first
    step's terms: the steps run from the last, whose keys are all of them
    (causal too), so its branch sets dK^T, dV^T and each earlier step's adds
    into their leading keys. One step, or more than _MAX_STEPS, run as
    ``attend_backward``.
    """
    T, S = qs.shape[1], kt.shape[2]
    if not _switched(T, rows):
        return attend_backward(qs, kt, vt, do, causal, mask, rows)

    def branch(a, b, keys, first):
        def run(carry):
            qs, kt, vt, do, dq, dkt, dvt = carry
            kt_a, vt_a, mask_a = _keys(kt, vt, mask, keys)
            dq_s, dkt_s, dvt_s = _backward_block(qs[:, a:b], kt_a, vt_a, do[:, a:b], a, causal, mask_a)
            if first:  # keys = S: this step's terms start the sums (the carried dkt, dvt are placeholders)
                dkt, dvt = dkt_s, dvt_s
            else:
                dkt, dvt = dkt.at[:, :, :keys].add(dkt_s), dvt.at[:, :, :keys].add(dvt_s)
            return qs, kt, vt, do, dq.at[:, a:b].set(dq_s), dkt, dvt
        return run

    steps = _steps(T, rows, S, causal)[::-1]
    branches = [branch(*step, first=n == 0) for n, step in enumerate(steps)]
    # placeholders made from dO, as in ``attend_backward`` (every row of dq is set; dK^T, dV^T are set first)
    later = jnp.broadcast_to(jnp.swapaxes(do[:, :1, :, :1], 1, 2), kt.shape)
    carry = lax.fori_loop(0, len(branches), lambda i, c: lax.switch(i, branches, c), (qs, kt, vt, do, do, later, later))
    return carry[4:]


def forward(kernel, qs, kt, vt, causal, mask, block_size):
    """(O (B, T, H, dh), residuals for ``backward``) by the kernel ``kernel`` names (``KERNELS``).

    qs = Q / sqrt(dh) (B, T, H, dh); kt, vt = K^T, V^T (B, H, S, dh); mask
    (B, S) bool or None; block_size: the layer's (None: each kernel's own
    choice). The residuals are (qs, kt, vt), and for "pallas" the rows'
    (max, sum of exponentials).
    """
    (B, T, H, _), S, itemsize = qs.shape, kt.shape[2], qs.dtype.itemsize
    kernel = kernel_for(kernel, causal, T)
    if kernel == "pallas":
        from manualbp.layers import flash_pallas

        o, stats = flash_pallas.attend(qs, kt, vt, causal, mask, block_size)
        return o, (qs, kt, vt, stats)
    if kernel == "batched":
        o, qs, kt, vt = attend_batched(qs, kt, vt, causal, mask, rows_per_step(B, H, T, S, itemsize, block_size))
    else:
        o, qs, kt, vt = attend(qs, kt, vt, causal, mask, rows_per_block(B, H, T, S, itemsize, block_size))
    return o, (qs, kt, vt)


def backward(kernel, residuals, do, causal, mask, block_size):
    """(dQs (B, T, H, dh), dK^T, dV^T (B, H, S, dh)) from ``forward``'s residuals and dO, by the same kernel."""
    qs, kt, vt = residuals[:3]
    (B, T, H, _), S, itemsize = qs.shape, kt.shape[2], qs.dtype.itemsize
    kernel = kernel_for(kernel, causal, T)
    if kernel == "pallas":
        from manualbp.layers import flash_pallas

        return flash_pallas.attend_backward(qs, kt, vt, residuals[3], do, causal, mask, block_size)
    if kernel == "batched":
        return attend_backward_batched(qs, kt, vt, do, causal, mask, rows_per_step(B, H, T, S, itemsize, block_size))
    return attend_backward(qs, kt, vt, do, causal, mask, rows_per_block(B, H, T, S, itemsize, block_size))
