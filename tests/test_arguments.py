"""The arguments that are not data (manualbp/layers/arguments.py): keys, layers, heads, functions, flags, counts,
numbers, an init's shape and dtype, and sizes that cannot fit in memory.

Each is refused with a TypeError/ValueError that names the layer or function and says what was expected and what
came, before jax, XLA or Python meet the argument and say something of their own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.layers import arguments

SCE = mbp.SoftmaxCrossEntropy()


def _key():
    return jax.random.key(0)


# ------------------------------------------------------------------------------------------------------ PRNG keys

@pytest.mark.parametrize("key, match", [
    (3, r"Dense.init: expected a PRNG key \(jax.random.key\(seed\)\), got int 3; for a seed use jax.random.key\(3\)"),
    (np.ones(2, np.float32), r"Dense.init: expected a PRNG key .*got float32\[2\]"),
    (jax.random.split(jax.random.key(0), 2), r"Dense.init: expected a single PRNG key, got an array of keys of shape "
                                             r"\(2,\)"),
])
def test_init_refuses_what_is_not_a_key(key, match):
    with pytest.raises(TypeError, match=match):
        mbp.Dense(3).init(key, (4,))


def test_raw_key_data_is_the_typed_key():
    typed, _ = mbp.Dense(3).init(jax.random.key(5), (4,))
    raw, _ = mbp.Dense(3).init(jax.random.PRNGKey(5), (4,))
    assert np.array_equal(typed["W"], raw["W"])


def test_a_none_key_is_refused_only_by_a_layer_that_draws():
    with pytest.raises(TypeError, match=r"Dense.init: key is None, but Dense draws its initial parameters at random; "
                                        r"pass a PRNG key"):
        mbp.Dense(3).init(None, (4,))
    assert mbp.ReLU().init(None, (4,)) == ({}, (4,))


# ------------------------------------------------------------------------------------------ init's shape and dtype

@pytest.mark.parametrize("shape, match", [
    ((0,), r"got \(0,\): a size of 0 makes an empty array"),
    ((-2,), r"got \(-2,\): a size of -2 makes no array"),
    ((2.0,), r"got \(2.0,\): the size 2.0 is not an int"),
])
def test_init_refuses_an_input_shape_of_sizes_below_1(shape, match):
    with pytest.raises(ValueError, match=r"Dense.init: expected an input shape \(a tuple of sizes >= 1, batch "
                                         r"excluded\), " + match):
        mbp.Dense(3).init(_key(), shape)
    with pytest.raises(TypeError, match=r"Dense.init: expected an input shape as a tuple of sizes .*got int 4"):
        mbp.Dense(3).init(_key(), 4)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_init_refuses_a_non_float_dtype(dtype):
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"Dense.init: dtype must be a floating dtype \(float32, float64, bfloat16, "
                                        rf"float16\), got {name}; parameters are real numbers"):
        mbp.Dense(3).init(_key(), (4,), dtype)
    with pytest.raises(TypeError, match=r"Dense.init: dtype must be a floating dtype .*got 'banana'"):
        mbp.Dense(3).init(_key(), (4,), "banana")


# ------------------------------------------------------------------------------------------ layers, heads, callables

@pytest.mark.parametrize("model, match", [
    (3, r"value_and_grad: expected model to be a layer \(an object with forward\(params, x\) and "
        r"backward\(params, cache, dy\)\), got int 3"),
    (mbp.Dense, r"value_and_grad: expected model to be a layer instance, got the class Dense; build one, e.g. "
                r"Dense\(...\)"),
    (None, r"value_and_grad: expected model to be a layer .*got NoneType None"),
])
def test_a_model_that_is_not_a_layer_is_refused_at_once(model, match):
    with pytest.raises(TypeError, match=match):
        mbp.value_and_grad(model, SCE)


@pytest.mark.parametrize("head, match", [
    (mbp.Dense(3), r"value_and_grad: expected head to be a loss head \(forward\(logits, labels, mask\) -> "
                   r"\(loss, cache\), backward\(cache\) -> dlogits, .*got Dense"),
    (mbp.SoftmaxCrossEntropy, r"value_and_grad: expected head to be a loss head instance, got the class "
                              r"SoftmaxCrossEntropy; build one, e.g. SoftmaxCrossEntropy\(\)"),
    ("sce", r"value_and_grad: expected head to be a loss head .*got str 'sce'"),
])
def test_a_head_that_is_not_a_loss_head_is_refused_at_once(head, match):
    with pytest.raises(TypeError, match=match):
        mbp.value_and_grad(mbp.Dense(3), head)


@pytest.mark.parametrize("call, error, match", [
    (lambda: mbp.value_and_grad(mbp.Dense(3), SCE, jit=1), TypeError,
     r"value_and_grad: jit must be True or False, got int 1"),
    (lambda: mbp.compare(mbp.Dense(3), 3, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32)), TypeError,
     r"compare: expected head to be a loss head .*got int 3"),
    (lambda: mbp.gradcheck(mbp.Dense, SCE, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32)), TypeError,
     r"gradcheck: expected model to be a layer instance, got the class Dense"),
    (lambda: mbp.as_function(3), TypeError, r"as_function: expected layer to be a layer .*got int 3"),
    (lambda: mbp.as_function(mbp.Dense), TypeError, r"as_function: expected layer to be a layer instance, got the "
                                                    r"class Dense"),
    (lambda: mbp.with_dropout_key(3, _key()), TypeError, r"with_dropout_key: expected model to be a layer .*got int 3"),
    (lambda: mbp.with_dropout_key(mbp.Dropout(0.5), 3), TypeError, r"with_dropout_key: expected a PRNG key "
                                                                    r"\(jax.random.key\(seed\)\), got int 3"),
    (lambda: mbp.without_dropout("model"), TypeError, r"without_dropout: expected model to be a layer .*got str"),
    (lambda: mbp.check_layer(mbp.Dense(3), {}, jnp.ones((1, 4)), reference=3), TypeError,
     r"check_layer: expected reference to be a function \(params, x\) -> y, got int 3"),
    (lambda: mbp.check_vjp(3, jnp.sin, jnp.ones(3)), TypeError,
     r"check_vjp: expected fn to be a function \(the one whose VJP was written by hand\), got int 3"),
    (lambda: mbp.check_vjp(jnp.sin, 3, jnp.ones(3)), TypeError,
     r"check_vjp: reference must be a function, None or 'finite-differences', got int"),
    (lambda: mbp.gradcheck(mbp.Dense(3), SCE, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32), k=1.5), TypeError,
     r"gradcheck: k must be an int >= 1, got float 1.5"),
    (lambda: mbp.gradcheck(mbp.Dense(3), SCE, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32), eps=0), ValueError,
     r"gradcheck: eps must be finite and > 0, got 0"),
    (lambda: mbp.gradcheck(mbp.Dense(3), SCE, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32), key=7), TypeError,
     r"gradcheck: expected a PRNG key .*got int 7"),
    (lambda: mbp.gradient_flow(mbp.Dense(3), SCE, {}, jnp.ones((1, 4)), jnp.zeros(1, jnp.int32), lr="big"), TypeError,
     r"gradient_flow: lr must be a number, got str 'big'"),
])
def test_api_arguments_are_refused_with_the_functions_name(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_register_reference_refuses_a_class_that_is_not_a_layer():
    with pytest.raises(TypeError, match=r"register_reference: int is not a layer class \(its instances need "
                                        r"forward\(params, x\) and backward\(params, cache, dy\)\)"):
        mbp.register_reference(int, lambda layer, params, x: x)


# ---------------------------------------------------------------------------------------------------------- sizes

@pytest.mark.parametrize("layer, shape, match", [
    (mbp.Dense(10**9), (4,), r"Dense.init: its parameters \(20.0 GB; the largest, \['W'\], float32\[4,1000000000\]\)"),
    (mbp.Embedding(10**10, 16), (3,), r"Embedding.init: its parameters \(640.0 GB; the largest, \['E'\], "
                                      r"float32\[10000000000,16\]\)"),
    (mbp.Sequential(mbp.Flatten(), mbp.Dense(10)), (10**5, 10**5, 1),
     r"Sequential.init: its parameters \(400.0 GB; the largest, \[1\]\['W'\], float32\[10000000000,10\]\)"),
])
def test_an_init_that_cannot_fit_in_memory_names_the_layer_and_the_size(layer, shape, match, monkeypatch):
    monkeypatch.setattr(arguments, "memory_bytes", lambda: 8 * 10**9)  # the same figure on every machine
    with pytest.raises(ValueError, match=match + r" and the random draw of the largest need [\d.]+ [GT]B, more than "
                                               r"the 8.0 GB of memory of CPU device 0; make the layer smaller"):
        layer.init(_key(), shape)


def test_a_pass_that_cannot_fit_in_memory_is_refused_before_xla_allocates(monkeypatch):
    monkeypatch.setattr(arguments, "memory_bytes", lambda: 8 * 10**9)
    model = mbp.Sequential(mbp.Conv2D(8, (3, 3), padding="SAME"), mbp.GlobalAvgPool2D(), mbp.Dense(2))
    params, _ = model.init(_key(), (16, 16, 1))
    x = jax.ShapeDtypeStruct((1, 10**5, 10**5, 1), jnp.float32)  # never made: the check is abstract
    f = mbp.value_and_grad(model, SCE)
    with pytest.raises(ValueError, match=r"value_and_grad: one pass of Sequential on x float32\[1,100000,100000,1\] "
                                         r"\(x, parameters and gradients, and [\d.]+ GB kept for backward\) need "
                                         r"[\d.]+ GB, more than the 8.0 GB .*use a smaller batch or input"):
        jax.eval_shape(f, params, x, jnp.zeros((1,), jnp.int32))
    small = jnp.ones((1, 16, 16, 1), jnp.float32)
    assert np.isfinite(f(params, small, jnp.zeros((1,), jnp.int32))[0])


# ------------------------------------------------------------------------------------------------ hyperparameters

@pytest.mark.parametrize("make, error, match", [
    (lambda: mbp.GELU(approximate="yes"), TypeError, r"GELU: approximate must be True or False, got str 'yes'"),
    (lambda: mbp.Dense(3, use_bias="no"), TypeError, r"Dense: use_bias must be True or False, got str 'no'"),
    (lambda: mbp.Conv2D(3, 3, use_bias=1), TypeError, r"Conv2D: use_bias must be True or False, got int 1"),
    (lambda: mbp.Conv1D(3, 3, use_bias=None), TypeError, r"Conv1D: use_bias must be True or False, got NoneType"),
    (lambda: mbp.LeakyReLU("a"), TypeError, r"LeakyReLU: negative_slope must be a number, got str 'a'"),
    (lambda: mbp.LeakyReLU(float("nan")), ValueError, r"LeakyReLU: negative_slope must be finite, got nan"),
    (lambda: mbp.Dense(True), ValueError, r"Dense: features must be a positive int, got True"),
    (lambda: mbp.Elementwise(3, jnp.cos), TypeError, r"Elementwise: expected fn to be a function of x, got int 3"),
    (lambda: mbp.Elementwise(jnp.sin, None), TypeError,
     r"Elementwise: expected derivative to be a function of x, got NoneType"),
    (lambda: mbp.Elementwise(jnp.sin, jnp.cos, label=3), TypeError, r"Elementwise: label must be a str, got int"),
    (lambda: mbp.Bidirectional(mbp.Dense(3)), TypeError,
     r"Bidirectional: the forward layer Dense is not a recurrent layer; .*pass an RNN, LSTM or GRU"),
    (lambda: mbp.Sequential(mbp.Dense(3), mbp.Dense), TypeError,
     r"Sequential: expected layer 1 to be a layer instance, got the class Dense"),
    (lambda: mbp.Parallel(mbp.Dense(3), 3), TypeError, r"Parallel: expected branch 1 to be a layer .*got int 3"),
])
def test_hyperparameters_are_refused_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()
