"""MultiHeadAttention: random configurations vs jax.grad and finite differences, masks, memory, bad input.

The tests of exact values (one allowed key, a fully masked row) run with each kernel; the kernels' own
tests (random configurations, bfloat16, memory, the choice of kernel) are in tests/test_attention_kernels.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import host

import manualbp as mbp
from manualbp import reference as ref
from manualbp.backprop import loss_and_grads

HEAD = mbp.MeanSquaredError()


def _normal(rng, shape, dtype):
    return host(rng.standard_normal(shape), dtype)


def _setup(layer, B, T, D, S, Dc, dtype, seed=0, dead_row=False):
    """(params, inputs, target) for ``layer``; the key mask keeps >= 1 key per sequence unless ``dead_row``."""
    rng = np.random.default_rng(seed)
    x = _normal(rng, (B, T, D), dtype)
    inputs, shapes = [x], [(T, D)]
    S = S if layer.cross else T
    if layer.cross:
        inputs.append(_normal(rng, (B, S, Dc), dtype))
        shapes.append((S, Dc))
    if layer.key_mask:
        mask = rng.random((B, S)) < 0.6
        mask[:, 0] = True  # causal row 0 sees key 0: no fully masked row unless asked for
        if dead_row:
            mask[-1] = False
        inputs.append(host(mask))
        shapes.append((S,))
    params, out_shape = layer.init(jax.random.key(seed), shapes[0] if len(shapes) == 1 else tuple(shapes), dtype)
    assert out_shape == (T, D)
    # non-zero biases, so that every parameter gradient is exercised
    params = {k: host(np.asarray(v) + 0.3 * rng.standard_normal(v.shape), dtype) for k, v in params.items()}
    target = _normal(rng, (B, T, D), dtype)
    return params, inputs[0] if len(inputs) == 1 else tuple(inputs), target


def _configs(n, seed=11):
    """n random configurations: heads 1-4, T 1-17, causal or not, masks, cross-attention, block sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        heads = int(rng.integers(1, 5))
        head_dim = None if rng.random() < 0.5 else int(rng.integers(1, 4))
        cross = bool(rng.random() < 0.3)
        T = int(rng.integers(1, 18))
        out.append(dict(
            layer=mbp.MultiHeadAttention(heads, head_dim=head_dim, causal=not cross and bool(rng.random() < 0.5),
                                         use_bias=bool(rng.random() < 0.8), cross=cross,
                                         key_mask=bool(rng.random() < 0.4),
                                         block_size=None if rng.random() < 0.5 else int(rng.integers(1, T + 1))),
            B=int(rng.integers(1, 4)), T=T, D=heads * 2 if head_dim is None else int(rng.integers(1, 6)),
            S=int(rng.integers(1, 10)), Dc=int(rng.integers(1, 6)),
            dtype=(jnp.float32, jnp.float64)[i % 2], jit=i % 4 != 1))
    # the corners: one query, 17 queries in overlapping blocks, four heads, a causal mask with padding
    out[0].update(T=1)
    out[1].update(layer=mbp.MultiHeadAttention(4, causal=True, key_mask=True, block_size=5), T=17, D=8)
    return out


@pytest.mark.parametrize("cfg", _configs(8), ids=lambda c: f"{c['layer'].num_heads}h-T{c['T']}-"
                         f"{'causal' if c['layer'].causal else 'cross' if c['layer'].cross else 'full'}"
                         f"{'-mask' if c['layer'].key_mask else ''}-{jnp.dtype(c['dtype']).name}"
                         f"{'-jit' if c['jit'] else ''}")
def test_random_configurations_match_jax_grad(cfg):
    layer = cfg["layer"]
    params, inputs, target = _setup(layer, cfg["B"], cfg["T"], cfg["D"], cfg["S"], cfg["Dc"], cfg["dtype"])
    report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), inputs, target, jit=cfg["jit"])
    assert report.ok, str(report)
    quantities = {r.quantity for r in report.rows if r.layer == "0 MultiHeadAttention"}
    assert {"forward y", "dWq", "dWk", "dWv", "dWo"} <= quantities
    assert ("dL/dx.0" if isinstance(inputs, tuple) else "dL/dx") in quantities
    if layer.cross:
        assert "dL/dx.1" in quantities  # the context's gradient is compared too


@pytest.mark.parametrize("layer", [
    mbp.MultiHeadAttention(2, causal=True, block_size=2),
    mbp.MultiHeadAttention(3, head_dim=2, cross=True, key_mask=True),
], ids=["causal-blocks", "cross-masked"])
def test_finite_differences(layer):
    params, inputs, target = _setup(layer, 2, 5, 6, 4, 3, jnp.float64, seed=3)
    report = mbp.gradcheck(mbp.Sequential(layer), HEAD, (params,), inputs, target, k=6)
    assert report.ok, str(report)


def test_masked_keys_get_exactly_zero_probability_and_gradient():
    """Changing a masked key's context row changes nothing, and that row's gradient is exactly 0."""
    layer = mbp.MultiHeadAttention(2, cross=True, key_mask=True, block_size=3)
    params, (x, c, mask), _ = _setup(layer, 2, 7, 4, 5, 3, jnp.float64, seed=5)

    @jax.jit
    def run(params, c):
        y, cache = layer.forward(params, (x, c, mask))
        return y, layer.backward(params, cache, jnp.ones_like(y))[1][1]

    y, dc = run(params, c)
    y2, _ = run(params, jnp.where(mask[:, :, None], c, 1e3))  # huge values at every masked key
    assert jnp.array_equal(y, y2)
    assert jnp.all(dc[~mask] == 0) and jnp.any(dc[mask] != 0)


def test_causal_output_ignores_the_future():
    layer = mbp.MultiHeadAttention(2, causal=True, block_size=2)
    params, x, _ = _setup(layer, 1, 6, 4, 0, 0, jnp.float64, seed=6)
    fwd = jax.jit(lambda p, x: layer.forward(p, x)[0])
    y, y2 = fwd(params, x), fwd(params, x.at[:, 4:].set(7.0))
    assert jnp.array_equal(y[:, :4], y2[:, :4]) and not jnp.array_equal(y[:, 4:], y2[:, 4:])


KERNELS = ["loop", "batched", "pallas"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_fully_masked_row_outputs_the_output_bias_and_passes_no_gradient(kernel):
    """The documented convention: no key to attend to -> O = 0, y = bo, and no gradient through the attention."""
    layer = mbp.MultiHeadAttention(2, key_mask=True, block_size=2, kernel=kernel)
    params, (x, mask), target = _setup(layer, 3, 5, 4, 0, 0, jnp.float64, seed=7, dead_row=True)
    assert not bool(jnp.any(mask[-1]))

    @jax.jit
    def run(params, x):
        y, cache = layer.forward(params, (x, mask))
        return y, layer.backward(params, cache, jnp.ones_like(y))[1][0]

    y, dx = run(params, x)
    assert jnp.array_equal(y[-1], jnp.broadcast_to(params["bo"], y[-1].shape))
    assert jnp.all(dx[-1] == 0) and jnp.all(jnp.isfinite(dx))
    report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), (x, mask), target)
    assert report.ok, str(report)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ["one key", "one key left by the mask", "causal T=1"])
def test_a_row_with_one_allowed_key_has_exactly_zero_dq_and_dk(case, dtype, kernel):
    """Softmax over one key is the constant 1, so dS, dQ and dK are exactly 0, as jax.grad gives them.

    FlashAttention's form, P = exp(S - lse) with S recomputed by another product and dS = P (dP - dO . O),
    left ~1e-9 there (two dot products rounded apart): a false FAIL against jax.grad's exact 0, found by
    scripts/attention_configs.py (config 33: cross-attention, S = 1, head_dim 1, float32, jit). The Pallas
    kernel keeps FlashAttention's lse but not its D = dO . O: P = exp(S - lse) = 1 exactly there (module
    docstring of flash_pallas); tiles of 2 put the one allowed key in a tile after masked ones.
    """
    layer, S = {"one key": (mbp.MultiHeadAttention(1, head_dim=1, cross=True, key_mask=True), 1),
                "one key left by the mask": (mbp.MultiHeadAttention(2, cross=True, key_mask=True), 4),
                "causal T=1": (mbp.MultiHeadAttention(2, causal=True), 1)}[case]
    layer = dataclasses.replace(layer, kernel=kernel, block_size=2 if kernel == "pallas" else None)
    params, inputs, target = _setup(layer, 3, 1 if case == "causal T=1" else 5, 4 if layer.head_dim is None else 1,
                                    S, 3, dtype, seed=33)
    if layer.key_mask:  # every sequence keeps its last key only (after a masked tile, for Pallas tiles of 2)
        inputs = (*inputs[:-1], jnp.zeros((3, S), bool).at[:, -1].set(True))

    def grads(params, inputs):
        y, cache = layer.forward(params, inputs)
        return layer.backward(params, cache, y - target)[0]

    g = jax.jit(grads)(params, inputs)
    zero = ("Wq", "bq", "Wk") if case != "causal T=1" else ("Wq", "bq")  # self-attention: x also feeds K, V
    for name in zero:
        assert jnp.all(g[name] == 0), (name, g[name])
    report = mbp.compare(mbp.Sequential(layer), HEAD, (params,), inputs, target)
    assert report.ok, str(report)


def _temp_bytes(step, params, x, y):
    return step.lower(params, x, y).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the byte counts are XLA CPU's buffer assignment")
def test_the_backward_keeps_no_probability_matrix():
    """Compiled memory per extra attention layer: manual keeps x, Q, K, V and O; jax.grad also keeps P.

    XLA's memory analysis is deterministic: the third layer adds exactly its
    cache to the manual step's temporary memory (plus alignment), while
    jax.grad's also grows by the layer's (B, heads, T, T) probabilities.
    """
    B, T, D, H = 2, 256, 16, 2
    temp = {}
    for L in (2, 3):
        model = mbp.Sequential(*[mbp.Residual(mbp.MultiHeadAttention(H, causal=True)) for _ in range(L)])
        params = jax.eval_shape(lambda k, model=model: model.init(k, (T, D), jnp.float32)[0], jax.random.key(0))
        x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
        manual = jax.jit(lambda p, x, y, model=model: loss_and_grads(model, HEAD, p, x, y)[:2])
        reference = jax.jit(ref.value_and_grad(model, HEAD, jit=False))
        for name, step in (("manual", manual), ("jax.grad", reference)):
            temp[name, L] = _temp_bytes(step, params, x, x)
    cache = 5 * B * T * D * 4  # x, Q/sqrt(dh), K^T, V^T and O
    probabilities = B * H * T * T * 4
    assert temp["manual", 3] - temp["manual", 2] <= cache + 1024
    assert temp["jax.grad", 3] - temp["jax.grad", 2] >= cache + probabilities


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(num_heads=0), "num_heads must be a positive int, got 0"),
    (dict(num_heads=2, head_dim=0), "head_dim must be a positive int"),
    (dict(num_heads=2, block_size=-1), "block_size must be a positive int"),
    (dict(num_heads=2, causal=1), "causal must be a bool"),
    (dict(num_heads=2, causal=True, cross=True), "causal applies to self-attention"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mbp.MultiHeadAttention(**kwargs)


def test_features_not_divisible_by_heads():
    layer = mbp.MultiHeadAttention(3)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: features D = 8 is not divisible by num_heads = 3"):
        layer.init(jax.random.key(0), (4, 8))
    params, _ = mbp.MultiHeadAttention(2).init(jax.random.key(0), (4, 8))
    with pytest.raises(ValueError, match=r"features D = 8 is not divisible by num_heads = 3"):
        layer.forward(params, jnp.ones((1, 4, 8)))
    with pytest.raises(ValueError, match=r"MultiHeadAttention: features D = 10 is not divisible by num_heads = 4"):
        mbp.TransformerBlock(10, 4)


def test_bad_masks():
    layer = mbp.MultiHeadAttention(2, key_mask=True)
    params, (x, mask), _ = _setup(layer, 2, 5, 4, 0, 0, jnp.float32)
    with pytest.raises(TypeError, match=r"expected a key mask of dtype bool \(True = a real key\), got float32\[2,5\]"):
        layer.forward(params, (x, mask.astype(jnp.float32)))
    with pytest.raises(ValueError, match=r"expected a key mask of shape \(2, 5\) \(batch, keys\), got \(2, 4\)"):
        layer.forward(params, (x, mask[:, :4]))
    with pytest.raises(TypeError, match=r"expected the input as a tuple \(x, mask\), got float32\[2,5,4\]"):
        layer.forward(params, x)


def test_other_bad_input():
    layer = mbp.MultiHeadAttention(2)
    params, x, _ = _setup(layer, 2, 5, 4, 0, 0, jnp.float32)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: expected x of rank 3, got shape \(5, 4\)"):
        layer.forward(params, x[0])
    with pytest.raises(ValueError, match=r"expected parameter Wq of shape \(6, 6\) \(D, heads \* head_dim\) = \(6, 6\), got \(4, 4\)"):
        layer.forward(params, jnp.ones((2, 5, 6), jnp.float32))
    with pytest.raises(TypeError, match=r"x has dtype float64 but Wq has float32"):
        layer.forward(params, x.astype(jnp.float64))
    with pytest.raises(TypeError, match=r"got a tuple input but cross=False and key_mask=False"):
        layer.forward(params, (x, x))
    cross = mbp.MultiHeadAttention(2, cross=True)
    cparams, (x, c), _ = _setup(cross, 2, 5, 4, 3, 3, jnp.float32)
    with pytest.raises(ValueError, match=r"x has batch 2 but context has batch 1"):
        cross.forward(cparams, (x, c[:1]))
    with pytest.raises(ValueError, match=r"expected parameter Wk of shape \(2, 4\)"):
        cross.forward(cparams, (x, c[..., :2]))


def test_an_empty_batch_is_refused_naming_the_layer():
    """Not a ZeroDivisionError from the kernel's block sizes."""
    layer = mbp.MultiHeadAttention(2)
    params, _ = layer.init(jax.random.key(0), (3, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: expected at least one sequence, query and key "
                                         r"\(B, T, S >= 1\), got x of shape \(0, 3, 4\)"):
        layer.forward(params, jnp.zeros((0, 3, 4), jnp.float32))
