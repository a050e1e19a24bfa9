"""Any JAX function's hand-written VJP against ``jax.vjp`` of the same computation left to autodiff: ``check_vjp``.

The function under test is typically a ``jax.custom_vjp`` (a stable loss, a
fused kernel, an attention variant); the reference computes the same thing
with plain library ops. For k random cotangents v the rows compare, per
differentiable input leaf,

.. math::
    v^T J_{fn}(x) \\quad \\text{vs} \\quad v^T J_{ref}(x),

and the outputs themselves. Two more properties of the backward, which
torch's gradcheck checks and ``jax.test_util.check_grads`` does not:

* reentrancy: the same pullback called twice, with a forward and backward at
  other inputs in between, gives bitwise-equal cotangents, so the backward
  keeps no hidden state (a stash of the forward's inputs, a counter, a
  Python-side RNG, a nondeterministic kernel);
* batching: ``jax.vmap`` of the pullback over the k stacked cotangents equals
  the loop over them.

This is the verify module that calls autodiff on the user's functions
(``jax.vjp``); ``tests/test_purity.py`` names it as that exception.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.arguments import check_callable, check_count
from manualbp.verify import forensics
from manualbp.verify.precision import full_precision
from manualbp.verify.report import Report, Row
from manualbp.verify.tolerances import Rule, Tolerance, resolve_verdict, tolerance
from manualbp.verify.verdict import NOT_COMPUTED, judge, structure_row
from manualbp.verify.vjp_inputs import Inputs, check_custom_vjp_rule, reraise_rule_error, trace_both


@full_precision
def check_vjp(fn, reference, *args, argnums=None, k: int = 3, seed: int = 0, jit: bool = False,
              nondet_tol: float = 0.0, title: str | None = None, verdict: str = "auto") -> Report:
    """Compare ``fn``'s VJP (hand-written) with ``jax.vjp`` of ``reference`` at ``args``.

    Args:
      fn: a JAX function whose derivative was written by hand (usually a
        ``jax.custom_vjp``), called as ``fn(*args)``; any pytree output.
      reference: the same computation left to autodiff, same signature and
        output structure.
      *args: the point to check at; pytrees welcome. Floating array leaves are
        differentiated; integer and boolean arrays (indices, masks) and Python
        scalars are side inputs and are not.
      argnums: an int or tuple of ints: differentiate only these arguments (a
        TypeError if one of them holds an integer leaf). Default: every
        argument's floating array leaves.
      k: how many random standard normal cotangents (drawn with ``seed``).
      jit: run everything under ``jax.jit`` (one compiled program per
        quantity, each backward traced afresh) instead of op by op.
      nondet_tol: how far (max abs) two calls of the backward may differ and
        still pass "backward twice", for a backward nondeterministic by design
        (atomic scatter-adds on a GPU); 0: bitwise equal, as torch's gradcheck.
      title: the report's title.
      verdict: how the cotangent rows are judged, as in ``compare``: "auto" (the error model below
        float32, else "conditioning"), "fixed", "conditioning" or "error-model" (fn's error
        against the reference run in a higher precision, float64 with x64 on, else float32, must
        be at most k times the reference's own error plus rounding).

    Returns:
      A ``Report``: one row per output leaf ("output", "output[1]", ...); one
      per differentiable input leaf, named by its argument path ("arg 0",
      "arg 0['W']"), comparing its k cotangents; then "<arg> backward twice"
      (must be bitwise equal) and "<arg> vmap over cotangents" rows. Where the
      check runs below the highest precision available, a cotangent row also
      holds fn's and the reference's errors against the high-precision truth.

    Raises:
      ValueError if ``reference`` runs a ``jax.custom_vjp`` (fn itself, say):
      its VJP would not be autodiff's and the check would prove nothing.
      ValueError/TypeError naming the argument or output: ``fn`` and
      ``reference`` with different output structures, shapes or dtypes; an
      integer argument in ``argnums``; a backward returning the wrong number,
      structure, shapes or dtypes of cotangents; NaN/Inf in the inputs.
    """
    check_callable("check_vjp", "fn", fn, "(the one whose VJP was written by hand)")
    check_callable("check_vjp", "reference", reference, "(the same computation left to autodiff)")
    check_count("check_vjp", "seed", seed, minimum=0)
    name, ref_name = _name(fn), _name(reference)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"check_vjp: k must be a positive int (the number of random cotangents), got {k!r}")
    if not nondet_tol >= 0:
        raise ValueError(f"check_vjp: nondet_tol must be >= 0, got {nondet_tol!r}")
    inputs = Inputs.build(name, args, argnums)
    out_spec, has_rule = trace_both(name, ref_name, fn, reference, inputs.args)
    check_custom_vjp_rule(fn, name, inputs.args)
    g_fn, g_ref = inputs.closed(fn), inputs.closed(reference)
    cts = _cotangents(out_spec, k, seed)

    with reraise_rule_error(name, inputs):
        y_fn, pull, got = _vjps(g_fn, inputs.diff, cts, jit)
    inputs.check_cotangent_dtypes(name, got[0])
    y_ref, _, want = _vjps(g_ref, inputs.diff, cts, jit)
    truth = _truth(reference, inputs, cts)

    dtype = _lowest_precision([*inputs.diff, *jax.tree_util.tree_leaves(y_fn)])
    tol = tolerance(dtype)
    judged_by = resolve_verdict(verdict, dtype, "check_vjp")
    if judged_by is Rule.ERROR_MODEL and truth is None:
        raise ValueError(f"check_vjp: verdict 'error-model' needs {ref_name} in a higher precision than {dtype.name}, "
                         f"and it could not be run there")
    unmeasured = ""
    if judged_by is Rule.CONDITIONING and truth is None:  # nothing measures the reference's own error: the fixed rule
        judged_by = Rule.FIXED
        unmeasured = (f"; {ref_name}'s own error is not measured ({dtype.name}: no higher precision"
                      f"{'' if jax.config.read('jax_enable_x64') else ' with 64-bit mode off'}), so the fixed rule")
    plain = "" if has_rule else f"; {name} runs no custom_vjp/custom_jvp: its VJP is autodiff's too"
    report = Report(title or f"check_vjp: {name} vs jax.vjp of {ref_name} ({k} random cotangent{'s' * (k > 1)}{plain}"
                    f"{unmeasured})", dtype.name, tol, verdict=judged_by, reference=ref_name)
    values = []  # (fn's, the reference's) value of every row that compares the two, for the diagnoses
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(y_fn), jax.tree_util.tree_leaves(y_ref)):
        report.rows.append(_row(name, "output" + jax.tree_util.keystr(path), a, b, tol))
        values.append((a, b))
    stack = lambda vjps, i: np.stack([np.asarray(v[i]) for v in vjps])  # noqa: E731  (k cotangents of input i)
    looped = [stack(got, i) for i in range(len(inputs.diff))]
    for i, (label, leaf) in enumerate(zip(inputs.labels, inputs.diff)):
        report.rows.append(_row(name, label, looped[i], stack(want, i), tol, verdict=judged_by,
                                truth=None if truth is None else stack(truth, i), shape=leaf.shape))
        values.append((looped[i], stack(want, i)))
    report.rows.extend(_reentrancy_rows(name, inputs, g_fn, pull, cts[0], got[0], jit, nondet_tol, tol))
    report.rows.extend(_vmap_rows(name, inputs, pull, cts, looped, jit, tol))
    report.set_diagnoser(_diagnoser(report.rows, values))
    return report


def _diagnoser(judged, values):
    """A failing output or cotangent row (k cotangents stacked on axis 0): the fit of fn's value against the
    reference's, scales named by the sizes of the input's own axes."""

    def context_of(i):
        shape = np.shape(values[i][1]) if i < len(values) else ()
        sizes = {f"the size {n} of axis {a}": n for a, n in enumerate(shape[1:], start=1) if n > 1}
        return forensics.Context(sizes=sizes, axes={0: "cotangent"})

    def values_of(i):
        return values[i] if i < len(values) else (np.nan, np.nan)

    return forensics.diagnoser(judged, values_of, context_of)


def _name(f) -> str:
    """A function's name for rows and messages (a functools.partial's is its function's)."""
    return getattr(f, "__name__", None) or getattr(getattr(f, "func", None), "__name__", None) or type(f).__name__


def _row(name: str, quantity: str, got, want, tol: Tolerance, *, verdict: Rule = Rule.FIXED, truth=None,
         exact: float | None = None, shape=None, why: str = "", note: str = "", failed: str = "") -> Row:
    """Every row of a check_vjp report is built here, on ``verdict.judge`` (the rows of ``compare``).

    ``verdict`` and ``truth`` (the reference in a higher precision at the same
    point) go to ``judge``: the error model compares fn's and the reference's
    errors against the truth. ``exact``: judge by ``Rule.EXACT``, max |got - want| <= exact
    instead (0: bitwise equal; reentrancy), ``why`` says what a failure means.
    ``shape``: the shape shown (the input's, for a stack of k cotangents).
    ``note``: shown on the row whatever its verdict. ``failed``: the quantity
    could not be computed (the reason): a failing structure row.
    """
    if failed:
        return structure_row(name, quantity, NOT_COMPUTED, failed, shape)
    if exact is not None:
        row = judge(name, quantity, got, want, tol, rule=Rule.EXACT, allowed=exact, note=note, why=why)
    else:
        eps = float(jnp.finfo(np.asarray(want).dtype).eps) if truth is not None else None
        row = judge(name, quantity, got, want, tol, rule=verdict, truth=truth, eps=eps, note=note)
    return row if shape is None else dataclasses.replace(row, shape=tuple(shape))


def _cotangents(out_spec, k: int, seed: int) -> list:
    """k cotangents for the outputs: standard normal on floating leaves, float0 zeros on integer ones.

    Drawn with NumPy: nothing to compile, whatever the shapes.
    """
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(out_spec)
    return [jax.tree_util.tree_unflatten(treedef, [
        jax.device_put(rng.standard_normal(s.shape).astype(s.dtype)) if jnp.issubdtype(s.dtype, jnp.inexact)
        else np.zeros(s.shape, jax.dtypes.float0) for s in leaves]) for _ in range(k)]


def _vjps(g, diff, cts, jit: bool):
    """(g(diff), pullback, [v^T J_g(diff) for v in cts]): one linearization, k pullbacks, one program under jit.

    The pullback is a pytree (its residuals are the leaves): it leaves a jitted function intact.
    """
    def run(diff, cts):
        y, pull = jax.vjp(g, diff)
        return y, pull, [pull(ct)[0] for ct in cts]

    return (jax.jit(run) if jit else run)(diff, cts)


def _truth(reference, inputs: Inputs, cts):
    """The reference's VJPs in the highest precision jax has here (float64 with x64 on, else float32), or None.

    None when every differentiable input is already in that precision, or when the reference
    refuses it (a function that insists on its dtype: the fixed tolerance decides then).
    """
    high = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    if all(jnp.finfo(leaf.dtype).eps <= jnp.finfo(high).eps for leaf in inputs.diff):
        return None
    up = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda v: v.astype(high) if jnp.issubdtype(v.dtype, jnp.floating) else v, t)
    try:
        return _vjps(inputs.closed_high(reference, high), up(inputs.diff), [up(ct) for ct in cts], jit=True)[2]
    except (TypeError, ValueError):
        return None


def _lowest_precision(leaves):
    floats = [np.dtype(leaf.dtype) for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return max(floats, key=lambda d: jnp.finfo(d).eps) if floats else np.dtype(np.float32)


def _reentrancy_rows(name, inputs: Inputs, g, pull, ct, first, jit: bool, nondet_tol: float, tol) -> list[Row]:
    """pullback(ct) again, after a forward and backward at other inputs: bitwise equal to the first call.

    Eagerly the backward's Python code runs on every call, so ``first`` (from
    the compared VJPs) is the first call. Under jit one program traces the
    pullback, a forward and backward at other inputs, and the pullback again
    (Python state gives two different results), and runs twice (a
    nondeterministic kernel gives two different runs).
    """
    rolled, note = inputs.rolled(), ""

    def disturb():
        nonlocal note
        try:
            jax.vjp(g, rolled)[1](ct)
        except Exception as e:  # noqa: BLE001  (other inputs may be outside fn's domain: then only repeat the call)
            note = f"the forward at rolled inputs raised {type(e).__name__}: repeated at the same inputs only"

    @jax.jit
    def twice(pull, ct):
        first = pull(ct)[0]
        disturb()
        return first, pull(ct)[0]

    why = ("two calls of the same pullback differ: the backward keeps hidden state (or is nondeterministic by design: "
           "then pass nondet_tol)")
    try:
        if jit:
            (first, again), (_, rerun) = twice(pull, ct), twice(pull, ct)
        else:
            disturb()
            again = rerun = pull(ct)[0]
    except Exception as e:  # noqa: BLE001  (e.g. a leaked tracer: state kept from an earlier trace)
        why = f"calling the pullback again raised {type(e).__name__}: the backward keeps hidden state"
        return [_row(name, f"{label} backward twice", None, None, tol, shape=a.shape, failed=why)
                for label, a in zip(inputs.labels, first)]
    rows = []
    for label, a, b, c in zip(inputs.labels, first, again, rerun):
        row = _row(name, f"{label} backward twice", b, a, tol, exact=nondet_tol, why=why, note=note, shape=a.shape)
        rows.append(row if not row.ok else _row(name, f"{label} backward twice", c, a, tol, exact=nondet_tol,
                                                why=why + " (between two runs of one compiled program)", note=note,
                                                shape=a.shape))
    return rows


def _vmap_rows(name, inputs: Inputs, pull, cts, looped, jit: bool, tol) -> list[Row]:
    """jax.vmap of the pullback over the k stacked cotangents vs the loop over them (``looped``)."""
    leaves0, treedef = jax.tree_util.tree_flatten(cts[0])
    floating = [jnp.issubdtype(v.dtype, jnp.inexact) for v in leaves0]  # float0 cotangents of integer outputs stay fixed

    def batched(pull, float_cts):
        def one(float_ct):
            it = iter(float_ct)
            return pull(jax.tree_util.tree_unflatten(treedef, [next(it) if f else v for f, v in zip(floating, leaves0)]))[0]

        return jax.vmap(one)(float_cts)

    columns = zip(*[[v for v, f in zip(jax.tree_util.tree_leaves(ct), floating) if f] for ct in cts])
    try:
        out = (jax.jit(batched) if jit else batched)(pull, [np.stack(col) for col in columns])
    except Exception as e:  # noqa: BLE001  (a backward that cannot be batched is a failing row, not a crash)
        why = f"the backward does not run under jax.vmap: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return [_row(name, f"{label} vmap over cotangents", None, None, tol, shape=leaf.shape, failed=why)
                for label, leaf in zip(inputs.labels, inputs.diff)]
    return [_row(name, f"{label} vmap over cotangents", b, a, tol, shape=leaf.shape)
            for label, a, b, leaf in zip(inputs.labels, looped, out, inputs.diff)]
