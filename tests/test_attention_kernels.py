"""The attention kernels forced on the CPU: "batched" (an accelerator's default) and "pallas" (in Pallas' interpreter).

Each is judged like the CPU's default "loop": the same random configurations against jax.grad, bfloat16
under the error model, the memory bound, the same mutants (tests/mutants/catalog.py runs every attention
bug with each kernel), and the exact zeros of tests/test_attention.py (parametrized there).
"""

import dataclasses

import accuracy
import jax
import jax.numpy as jnp
import pytest
from test_attention import HEAD, _configs, _setup

import manualbp as mbp
from manualbp.backprop import loss_and_grads
from manualbp.layers import flash, flash_pallas

CONFIGS = _configs(8)[:6]


def _id(c):
    kind = "causal" if c["layer"].causal else "cross" if c["layer"].cross else "full"
    return f"{c['layer'].num_heads}h-T{c['T']}-{kind}{'-mask' if c['layer'].key_mask else ''}-{jnp.dtype(c['dtype']).name}"


@pytest.mark.parametrize("kernel", ["batched", "pallas"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_each_kernel_matches_jax_grad(cfg, kernel):
    """tests/test_attention.py's random configurations (block sizes 1..T: steps for "batched", tiles for "pallas")."""
    layer = dataclasses.replace(cfg["layer"], kernel=kernel)
    params, inputs, target = _setup(layer, cfg["B"], cfg["T"], cfg["D"], cfg["S"], cfg["Dc"], cfg["dtype"])
    report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), inputs, target)
    assert report.ok, str(report)
    assert {"dWq", "dWk", "dWv", "dWo"} <= {r.quantity for r in report.rows if r.layer == "0 MultiHeadAttention"}


def test_the_batched_kernel_in_an_accelerators_large_steps_matches_jax_grad(monkeypatch):
    """An accelerator's budget gives 4 steps of T / 4 rows (the CPU's gives the loop's 4 MiB): forced here, causal."""
    monkeypatch.setattr(flash, "memory_budget", lambda: 1 << 30)
    layer = mbp.MultiHeadAttention(2, causal=True, key_mask=True, kernel="batched")
    assert flash.rows_per_step(2, 2, 11, 11, 8, None) == 3  # steps of rows [0, 3), [3, 6), [6, 9), [9, 11)
    params, inputs, target = _setup(layer, 2, 11, 4, 0, 0, jnp.float64, seed=4)
    report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), inputs, target)
    assert report.ok, str(report)


@pytest.mark.slow
def test_pallas_with_a_gpus_tiles_in_the_interpreter(monkeypatch):
    """A GPU pads to Triton's tiles (powers of two >= 16, dh to 16): that padding, interpreted, changes nothing."""
    gpu_tiles = flash_pallas._tiles
    monkeypatch.setattr(flash_pallas, "_tiles", lambda T, S, dh, block_size, interpret: gpu_tiles(T, S, dh, block_size,
                                                                                                   False))
    assert flash_pallas._tiles(20, 20, 3, None, True) == (32, 32, 16)
    for layer in (mbp.MultiHeadAttention(2, causal=True, block_size=16, kernel="pallas"),
                  mbp.MultiHeadAttention(1, head_dim=3, cross=True, key_mask=True, kernel="pallas")):
        params, inputs, target = _setup(layer, 2, 20, 4, 7, 3, jnp.float64, seed=8)
        report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), inputs, target)
        assert report.ok, str(report)


@pytest.mark.parametrize("kernel", ["loop", "batched", "pallas"])
def test_each_kernel_in_bfloat16(kernel):
    """bfloat16 under the error model (manual's error against float64 within k x jax.grad's own): Pallas sums in
    float32, the jnp kernels in bfloat16, as XLA computes them."""
    layer = mbp.MultiHeadAttention(2, causal=True, block_size=4, kernel=kernel)
    params, x, target = _setup(layer, 2, 9, 8, 0, 0, jnp.float32, seed=2)
    low = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (params, x, target))
    report = mbp.compare(mbp.Sequential(layer), HEAD, (low[0],), low[1], low[2])
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pallas_is_as_accurate_as_jax_grad_where_the_softmax_saturates(dtype):
    """Inputs of scale 30 (scores in the hundreds: rows with one P near 1), errors against a 50+ digit truth.

    FlashAttention-2's P = exp(S - lse) and dS = P (dP - D) were up to 3320x jax.grad's error here in float64
    (dWk 3.0e-2 against 9.0e-6); P from the row's m and l and dS in two passes (``flash_pallas``'s docstring)
    bring every gradient within 2x, as the "loop" kernel.
    """
    case = accuracy.Case("MultiHeadAttention (causal, pallas)", mbp.MultiHeadAttention(2, causal=True, kernel="pallas"),
                         (4, 8))
    errors = [e for seed in range(2) for e in accuracy.errors(case, dtype, 30.0, seed)]
    assert {e.quantity for e in errors} >= {"dx", "dWq", "dWk", "dWv", "dWo"}
    assert max(e.ratio for e in errors) <= 2, max(errors, key=lambda e: e.ratio)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the byte counts are XLA CPU's buffer assignment")
@pytest.mark.parametrize("kernel", ["batched", "pallas"])
def test_no_kernel_keeps_a_probability_matrix(kernel):
    """tests/test_attention.py's memory test with the kernel forced: a third layer adds its cache, not P.

    "batched": exactly the cache (x, Q, K^T, V^T, O), like "loop". "pallas": also the rows' max and sum, and the
    interpreter's copies of the inputs its loop over the grid reads (a GPU runs a pallas_call on its inputs in
    place; the device check measures it there); still far from the layer's (B, heads, T, T) probabilities.
    """
    B, T, D, H = 2, 256, 16, 2
    temp = {}
    for L in (2, 3):
        model = mbp.Sequential(*[mbp.Residual(mbp.MultiHeadAttention(H, causal=True, kernel=kernel)) for _ in range(L)])
        params = jax.eval_shape(lambda k, model=model: model.init(k, (T, D), jnp.float32)[0], jax.random.key(0))
        x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
        step = jax.jit(lambda p, x, y, model=model: loss_and_grads(model, HEAD, p, x, y)[:2])
        temp[L] = step.lower(params, x, x).compile().memory_analysis().temp_size_in_bytes
    cache, probabilities = 5 * B * T * D * 4, B * H * T * T * 4
    if kernel == "batched":
        assert temp[3] - temp[2] <= cache + 1024
    else:
        assert temp[3] - temp[2] <= probabilities / 2


def test_auto_is_batched_on_an_accelerator_and_what_measured_fastest_on_a_cpu(monkeypatch):
    """A CPU: "batched" for causal attention from T = 256 (where its steps skipping masked keys measured faster),
    else "loop"."""
    assert [flash.kernel_for("auto", causal, T) for causal, T in ((True, 255), (True, 256), (False, 4096))] == \
        ["loop", "batched", "loop"]
    assert flash.kernel_for("pallas", True, 512) == "pallas" and flash.kernel_for("loop", True, 512) == "loop"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert flash.kernel_for("auto", False, 16) == "batched" and flash.kernel_for("loop") == "loop"


class _Device:
    def __init__(self, platform, stats):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        return self._stats


@pytest.mark.parametrize(("device", "budget"), [
    (_Device("cpu", None), 4 << 20),
    (_Device("gpu", {"bytes_limit": 80 << 30}), (80 << 30) // 64),
    (_Device("gpu", None), 256 << 20),
    (_Device("tpu", {"bytes_limit": 64 << 20}), 4 << 20),  # never below the loop's block
], ids=["cpu", "gpu-80GiB", "no-stats", "small"])
def test_the_memory_budget_per_device(monkeypatch, device, budget):
    monkeypatch.setattr(jax, "devices", lambda: [device])
    assert flash.memory_budget() == budget


def test_rows_per_step():
    """T / 4 where it fits the budget; else as many rows as fit (then "batched" runs as the loop past 8 steps)."""
    B, H, T, S = 8, 4, 4096, 4096
    per_row = B * H * S * 4
    assert flash.rows_per_step(B, H, T, S, 4, None, budget=(80 << 30) // 64) == 1024  # an H100: 4 steps
    assert flash.rows_per_step(B, H, T, S, 4, None, budget=100 * per_row) == 100
    assert flash.rows_per_step(B, H, T, S, 4, None, budget=1) == 1
    assert flash.rows_per_step(B, H, T, S, 4, 300) == 300 and flash.rows_per_step(B, H, 6, S, 4, 300) == 6
    assert flash._switched(T, 1024) and not flash._switched(T, 100) and not flash._switched(T, T)


def test_a_transformer_block_passes_its_kernel():
    block = mbp.TransformerBlock(8, 2, causal=True, kernel="pallas")
    assert dict(block.parts)["attn"].kernel == "pallas"
    assert dict(mbp.TransformerBlock(8, 2).parts)["attn"].kernel == "auto"


def test_bad_kernel():
    with pytest.raises(ValueError, match=r"MultiHeadAttention: kernel must be one of \('auto', 'loop', 'batched', "
                                         r"'pallas'\), got 'flash'"):
        mbp.MultiHeadAttention(2, kernel="flash")
