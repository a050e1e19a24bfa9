"""check_vjp with no reference: a hand-written kernel judged against its own forward (finite differences in float64
and the Taylor test), and the custom_jvp and second-order checks.

The kernel is the chunked attention of FlashAttention-2 (Dao, 2023, Algorithm 1 and 2): the forward runs over key
blocks with an online softmax and keeps only the output and the row log-sum-exp; the backward recomputes each
block's probabilities from them. Written here the way such a kernel's author writes it, with no second version of
the computation beside it.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.verify import forensics as fx
from manualbp.verify import taylor
from manualbp.verify.tolerances import TAYLOR

RNG = np.random.default_rng(0)


def host(shape, dtype=np.float64, scale=1.0):
    return jax.device_put((scale * RNG.standard_normal(shape)).astype(dtype))


# ---- the kernel ------------------------------------------------------------------------------------------------------

def _scores(q, k_j, j, causal):
    """One key block's scaled scores; a causal mask hides key t > query row (row i sees keys 0..i)."""
    s = q @ k_j.T / math.sqrt(q.shape[-1])
    if causal:
        rows, cols = jnp.arange(q.shape[0])[:, None], j + jnp.arange(k_j.shape[0])[None, :]
        s = jnp.where(cols <= rows, s, -jnp.inf)
    return s


def _forward(q, k, v, causal, block):
    m = jnp.full(q.shape[:1], -jnp.inf, q.dtype)
    l = jnp.zeros(q.shape[:1], q.dtype)
    o = jnp.zeros(q.shape, q.dtype)
    for j in range(0, k.shape[0], block):  # the online softmax: running max m, running sum l
        s = _scores(q, k[j:j + block], j, causal)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[:, None])
        corr = jnp.exp(m - m_new)
        l, o, m = l * corr + p.sum(-1), o * corr[:, None] + p @ v[j:j + block], m_new
    return o / l[:, None], m + jnp.log(l)


def make_flash_attention(bug=None, block=4):
    """softmax(q k^T / sqrt(d)) v over (T, d) arrays, with a FlashAttention-2 backward; ``bug`` plants one."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def flash_attention(q, k, v, causal=False):
        return _forward(q, k, v, causal, block)[0]

    def fwd(q, k, v, causal):
        o, lse = _forward(q, k, v, causal, block)
        return o, (q, k, v, o, lse)

    def bwd(causal, res, do):
        q, k, v, o, lse = res
        d = (do * o).sum(-1)  # D_i = rowsum(dO o O)
        scale = 1 / math.sqrt(q.shape[-1])
        dq, dk, dv = jnp.zeros_like(q), [], []
        for j in range(0, k.shape[0], block):
            p = jnp.exp(_scores(q, k[j:j + block], j, causal) - lse[:, None])  # recomputed, not stored
            dv.append(p.T @ do)
            dp = do @ v[j:j + block].T
            ds = p * (dp - (0 if bug == "forgot D" else d[:, None]))
            dq = dq + ds @ k[j:j + block] * (1 if bug == "dq unscaled" else scale)
            dk.append(ds.T @ q * scale)
        return dq, jnp.concatenate(dk), jnp.concatenate(dv)

    flash_attention.defvjp(fwd, bwd)
    return flash_attention


Q, K, V = host((8, 4)), host((8, 4)), host((8, 4))


def test_flash_attention_with_no_reference_passes_and_a_planted_bug_fails_on_q():
    right = mbp.check_vjp(make_flash_attention(), None, Q, K, V, kwargs={"causal": True}, k=2, jit=True)
    assert right.ok, right
    assert "no reference" in right.title and right.reference == "the finite difference"
    assert [r.quantity for r in right.rows[:6]] == ["q", "k", "v", "q taylor", "k taylor", "v taylor"]
    for name in ("q", "k"):
        rate = float(right.row("flash_attention", f"{name} taylor").note.split("rate ")[1].split()[0])
        assert abs(rate - 2) < 0.1, right  # the measured convergence rate of a right rule
    linear = right.row("flash_attention", "v taylor")  # attention is linear in v: the remainder is rounding only
    assert not linear.compared and linear.note.startswith("rounding level"), right

    wrong = mbp.check_vjp(make_flash_attention("dq unscaled"), None, Q, K, V, kwargs={"causal": True}, k=2, jit=True)
    assert wrong.status == "FAIL" and wrong.first_failure.quantity == "q", wrong
    assert wrong.row("flash_attention", "k").ok and wrong.row("flash_attention", "v").ok
    diagnosis = wrong.first_failure.diagnosis
    assert diagnosis.kind == fx.SCALE and diagnosis.params["fraction"] == "2", diagnosis  # 1 / (1/sqrt(4)) = 2
    assert diagnosis.worst, diagnosis
    taylor_row = wrong.row("flash_attention", "q taylor")
    assert not taylor_row.ok and "rate 1.0" in taylor_row.note, wrong


def test_a_forgotten_term_fails_the_rows_it_touches_and_no_other():
    """D = rowsum(dO o O) left out: dq and dk are wrong, dv (which never uses D) is right."""
    wrong = mbp.check_vjp(make_flash_attention("forgot D"), None, Q, K, V, kwargs={"causal": True}, k=2, jit=True)
    failing = {r.quantity for r in wrong.rows if r.compared and not r.ok}
    assert failing == {"q", "k", "q taylor", "k taylor"}, wrong
    assert all(d.worst for d in wrong.diagnose())


def test_the_taylor_rate_is_fitted_above_the_rounding_floor():
    hs = taylor.steps()
    assert hs[0] == TAYLOR.h_max and np.isclose(hs[-1], TAYLOR.h_min)
    floor = np.full(hs.shape, 1e-16)
    right = taylor.rate(1.0, taylor.Taylor(hs, hs + hs**2, floor))  # phi(h) - phi(0) = h + h^2: g = 1 is right
    wrong = taylor.rate(1.001, taylor.Taylor(hs, hs + hs**2, floor))
    flat = taylor.rate(1.0, taylor.Taylor(hs, hs + 1e-17 * RNG.standard_normal(hs.shape), floor))  # linear: noise only
    assert abs(right.rate - 2) < 0.01 and abs(wrong.rate - 1) < 0.01
    assert flat.rate is None and flat.kept < TAYLOR.window
    noisy = taylor.rate(1.0, taylor.Taylor(hs, hs + hs**2, np.full(hs.shape, 1e-9)))  # a float32-like floor
    assert abs(noisy.rate - 2) < 0.05 and noisy.h_lo > 1e-4  # fitted only where h^2 > 100 x floor


def test_exhaustive_mode_compares_the_whole_cotangent_and_names_a_transpose():
    """Every coordinate's finite difference: the full J^T u, so a diagnosis sees its layout."""

    @jax.custom_vjp
    def bilinear(a, b):
        return jnp.tanh(a @ b)

    def bwd(res, dy):
        a, b, y = res
        g = dy * (1 - y**2)
        return (g @ b.T).T, a.T @ g  # da transposed (square: the shapes still fit)

    bilinear.defvjp(lambda a, b: (jnp.tanh(a @ b), (a, b, jnp.tanh(a @ b))), bwd)
    report = mbp.check_vjp(bilinear, None, host((3, 3)), host((3, 3)), mode="exhaustive", k=1, jit=True)
    assert report.first_failure.quantity == "a" and report.row("bilinear", "b").ok, report
    assert report.row("bilinear", "a").shape == (3, 3) and "every coordinate" in report.row("bilinear", "a").note
    assert report.first_failure.diagnosis.kind == fx.REARRANGED, report


def _softplus_jvp(scale):
    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(x, 0.0)

    @softplus.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return softplus(x), scale * jax.nn.sigmoid(x) * t

    return softplus


def test_a_custom_jvp_rule_is_checked_forward_and_backward():
    x = host((5,))
    right = mbp.check_vjp(_softplus_jvp(1.0), None, x, k=2, jit=True)
    assert right.ok, right
    for quantity in ("x jvp", "x jvp taylor", "x jvp/vjp"):
        assert right.row("softplus", quantity).compared, right
    wrong = mbp.check_vjp(_softplus_jvp(1.01), None, x, k=2, jit=True)
    assert {"x", "x jvp", "x taylor", "x jvp taylor"} <= {r.quantity for r in wrong.rows if not r.ok}, wrong
    assert wrong.row("softplus", "x jvp/vjp").ok  # JAX's VJP is the transpose of the (wrong) JVP: consistent
    against = mbp.check_vjp(_softplus_jvp(1.01), lambda x: jnp.logaddexp(x, 0.0), x, k=2, jit=True)
    assert not against.row("softplus", "x jvp").ok and against.row("softplus", "x jvp/vjp").ok, against


def _tanh(second_order_right: bool):
    @jax.custom_vjp
    def tanh(x):
        return jnp.tanh(x)

    def bwd(y, dy):  # right to first order either way; stop_gradient drops dy/dx's own dependence on x
        return (dy * (1 - (y if second_order_right else jax.lax.stop_gradient(y)) ** 2),)

    tanh.defvjp(lambda x: (jnp.tanh(x), jnp.tanh(x)), bwd)
    return tanh


def test_second_order_catches_a_backward_right_only_to_first_order():
    x = host((4,))
    for reference in (None, jnp.tanh):
        right = mbp.check_vjp(_tanh(True), reference, x, order=2, k=2, jit=True)
        assert right.ok and right.row("tanh", "x second order").compared, right
        wrong = mbp.check_vjp(_tanh(False), reference, x, order=2, k=2, jit=True)
        assert [r.quantity for r in wrong.rows if not r.ok] == ["x second order"], wrong


def test_a_rule_that_cannot_be_differentiated_twice_says_so():
    f = mbp.as_function(mbp.Tanh())
    report = mbp.check_vjp(f, None, {}, host((2, 3)), order=2, k=1, jit=True)
    row = report.row("as_function(Tanh)", "x second order")
    assert not row.ok and "cannot be differentiated (second order)" in row.note and "NotImplementedError" in row.note
    assert report.status == "FAIL" and all(r.ok for r in report.rows if r is not row), report


@pytest.mark.parametrize("reference", [None, "finite-differences"])
def test_no_reference_is_spelled_two_ways_and_a_wrong_spelling_is_refused(reference):
    f = _tanh(True)
    assert mbp.check_vjp(f, reference, host((3,)), k=1, jit=True).verdict == "finite-difference"
    with pytest.raises(ValueError, match="reference must be a function, None or 'finite-differences'"):
        mbp.check_vjp(f, "finite-difference", host((3,)))
    with pytest.raises(ValueError, match="mode='exhaustive' is the finite-difference check's"):
        mbp.check_vjp(f, jnp.tanh, host((3,)), mode="exhaustive")
