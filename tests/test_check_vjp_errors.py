"""check_vjp's bad input: each error names the argument or output, and says what was expected."""

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp


def custom(fun, fwd, bwd):
    f = jax.custom_vjp(fun)
    f.defvjp(fwd, bwd)
    return f


def scale(x, w):
    return x * w


def _fwd(x, w):
    return x * w, (x, w)


X, W = jnp.arange(1.0, 4.0), jnp.full((3,), 2.0)


def test_outputs_of_different_structures():
    with pytest.raises(ValueError, match=r"check_vjp: scale and <lambda> return different structures: scale returns "
                                         r"float64\[3\], <lambda> returns \(float64\[3\], float64\[3\]\)"):
        mbp.check_vjp(scale, lambda x, w: (x * w, x), X, W)


def test_outputs_of_different_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"output\[1\] of pair has shape \(3,\) but <lambda>'s has shape \(3, 1\)"):
        def pair(x):
            return x, x
        mbp.check_vjp(pair, lambda x: (x, x[:, None]), X)
    with pytest.raises(TypeError, match=r"output of scale has dtype float64 but <lambda>'s has dtype float32"):
        mbp.check_vjp(scale, lambda x, w: (x * w).astype(jnp.float32), X, W)


def test_integer_input_marked_differentiable():
    ids = jnp.array([0, 2, 1])
    with pytest.raises(TypeError, match=r"check_vjp: i is marked differentiable \(argnums\) but is int64\[3\]"):
        mbp.check_vjp(lambda t, i: t[i], lambda t, i: t[i], X, ids, argnums=(0, 1))
    with pytest.raises(TypeError, match=r"d\['ids'\] is marked differentiable"):
        mbp.check_vjp(lambda d: d["t"][d["ids"]], lambda d: d["t"][d["ids"]], {"t": X, "ids": ids}, argnums=0)
    with pytest.raises(ValueError, match=r"argnums \(2,\) does not name arguments of scale, which was given 2 "
                                         r"argument\(s\) \(x, w\)"):
        mbp.check_vjp(scale, scale, X, W, argnums=2)
    with pytest.raises(ValueError, match=r"argnums \('q',\) does not name arguments of scale"):
        mbp.check_vjp(scale, scale, X, W, argnums="q")


def test_nothing_to_differentiate_nan_inputs_and_k():
    with pytest.raises(ValueError, match=r"no floating-point array among the arguments of <lambda>"):
        mbp.check_vjp(lambda i: i * 2, lambda i: i * 2, jnp.array([1, 2]))
    with pytest.raises(ValueError, match=r"check_vjp: w contains NaN or Inf"):
        mbp.check_vjp(scale, scale, X, W.at[0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"k must be a positive int"):
        mbp.check_vjp(scale, scale, X, W, k=0)
    with pytest.raises(ValueError, match=r"check_vjp: argmax returns no floating-point output \(int64\[\]\)"):
        def argmax(x):
            return jnp.argmax(x)
        mbp.check_vjp(argmax, jnp.argmax, X)


def test_backward_returning_the_wrong_number_of_cotangents():
    f = custom(scale, _fwd, lambda res, dy: (dy * res[1],))
    with pytest.raises(ValueError, match=r"the backward of scale returns 1 cotangent\(s\) but scale takes 2 argument\(s\) "
                                         r"\(float64\[3\], float64\[3\]\); return a tuple with one cotangent per "
                                         r"argument \(None for one without a gradient\)"):
        mbp.check_vjp(f, scale, X, W)
    bare = custom(scale, _fwd, lambda res, dy: dy * res[1])
    with pytest.raises(ValueError, match=r"the backward of scale returns a bare float64\[3\]"):
        mbp.check_vjp(bare, scale, X, W)


def test_backward_returning_wrong_shapes_structures_or_dtypes():
    f = custom(scale, _fwd, lambda res, dy: (dy * res[1], jnp.sum(dy * res[0])))
    with pytest.raises(ValueError, match=r"the backward of scale returns a cotangent of shape \(\) for w "
                                         r"\(float64\[3\]\); a cotangent has its input's shape"):
        mbp.check_vjp(f, scale, X, W)
    g = custom(scale, _fwd, lambda res, dy: (dy * res[1], (dy * res[0]).astype(jnp.float32)))
    with pytest.raises(TypeError, match=r"returns a cotangent of dtype float32 for w \(float64\[3\]\)"):
        mbp.check_vjp(g, scale, X, W)

    def dense(p, x):
        return x * p["w"]

    h = custom(dense, lambda p, x: (dense(p, x), (p, x)), lambda res, dy: ((dy * res[1],), dy * res[0]["w"]))
    with pytest.raises(ValueError, match=r"returns for p a cotangent of structure \(float64\[3\],\), but p is "
                                         r"\{'w': float64\[3\]\}"):
        mbp.check_vjp(h, lambda p, x: x * p["w"], {"w": W}, X)


def test_a_wrong_rule_inside_a_wrapper_is_reported_in_check_vjps_words():
    inner = custom(scale, _fwd, lambda res, dy: (dy * res[1],))

    def outer(x, w):
        return jnp.sin(inner(x, w))

    with pytest.raises(TypeError, match=r"check_vjp: a jax.custom_vjp backward inside outer returns cotangents that do "
                                        r"not match its primal inputs .* JAX: Custom VJP bwd rule must produce"):
        mbp.check_vjp(outer, lambda x, w: jnp.sin(x * w), X, W)
    wrong_dtype = custom(scale, _fwd, lambda res, dy: (dy * res[1], (dy * res[0]).astype(jnp.float32)))

    def outer2(x, w):
        return wrong_dtype(x, w) * 1.0

    with pytest.raises(TypeError, match=r"the backward of outer2 returns a cotangent of dtype float32 for w"):
        mbp.check_vjp(outer2, scale, X, W)


def test_a_reference_that_runs_a_hand_written_rule_proves_nothing():
    f = custom(scale, _fwd, lambda res, dy: (dy * res[1], dy * res[0]))
    with pytest.raises(ValueError, match=r"the reference scale runs a jax.custom_vjp \(<lambda> at .*\), so jax.vjp of it "
                                         r"is a hand-written rule too, not autodiff"):
        mbp.check_vjp(f, f, X, W)  # fn as its own reference: would always pass
    with pytest.raises(ValueError, match=r"the reference <lambda> runs a jax.custom_vjp"):
        mbp.check_vjp(f, lambda x, w: jax.jit(f)(x, w) + 0.0, X, W)  # nested inside a jit, too


def test_a_function_without_a_rule_says_its_vjp_is_autodiffs():
    report = mbp.check_vjp(scale, lambda x, w: w * x, X, W)
    assert report.ok and "scale runs no custom_vjp/custom_jvp: its VJP is autodiff's too" in report.title
    rule = mbp.check_vjp(custom(scale, _fwd, lambda res, dy: (dy * res[1], dy * res[0])), scale, X, W)
    assert rule.ok and "autodiff's too" not in rule.title


def test_an_empty_input_is_inconclusive_not_a_pass():
    """Rows over zero entries compare nothing: each says so (not compared), and the report is INCONCLUSIVE."""
    report = mbp.check_vjp(jnp.sin, jnp.sin, jnp.zeros((0, 3)))
    assert report.status == "INCONCLUSIVE", str(report)
    assert report.rows and all(not row.compared and "empty: no entries" in row.note for row in report.rows)


@pytest.mark.parametrize("checker", ["check_vjp", "compare", "check_layer"])
def test_an_unknown_verdict_names_the_function(checker):
    match = rf"{checker}: verdict must be 'auto' or one of \['fixed', 'conditioning', 'error-model'\], got 'strict'"
    dense = mbp.Dense(3)
    params = dense.init(jax.random.key(0), (4,))[0]
    x = jnp.ones((2, 4), jnp.float32)
    calls = {"check_vjp": lambda: mbp.check_vjp(jnp.sin, jnp.sin, X, verdict="strict"),
             "compare": lambda: mbp.compare(dense, mbp.SoftmaxCrossEntropy(), params, x, jnp.array([0, 1]),
                                            verdict="strict"),
             "check_layer": lambda: mbp.check_layer(dense, params, x, verdict="strict")}
    with pytest.raises(ValueError, match=match):
        calls[checker]()


def test_tolerance_of_what_is_not_a_dtype():
    with pytest.raises(TypeError, match=r"tolerance: expected a dtype \(float32, float64, bfloat16, float16\), got "
                                        r"'banana'"):
        mbp.tolerance("banana")
