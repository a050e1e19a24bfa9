"""Any JAX function's hand-written VJP, checked: against autodiff of a reference, an intended rule, or no reference.

The function under test is typically a ``jax.custom_vjp`` (a stable loss, a fused kernel, an attention variant).
For k random cotangents u the rows compare, per differentiable input leaf, its cotangent

.. math::
    u^T J_{fn}(x)

with one of three things:

* ``reference=`` a function: ``jax.vjp`` of the same computation written with plain library ops, and the
  outputs themselves;
* ``expected_vjp=`` a function of (primals, cotangent): the rule the author intends, for rules meant to differ
  from the gradient (straight-through estimators, gradient reversal or clipping);
* no reference (``reference=None`` or ``"finite-differences"``): fn's own forward, in float64, by finite
  differences in random directions (or every coordinate) and the Taylor test (``vjp_numeric``).

Whatever the comparison, properties of the backward itself (torch's gradcheck checks the last two,
``jax.test_util.check_grads`` none):

* linearity in the cotangent: pull(a u + b w) = a pull(u) + b pull(w) (a backward that clips its cotangent is not
  linear: reported as such, whatever it is compared with);
* reentrancy: the same pullback called twice, with a forward and backward at other inputs in between, gives
  bitwise-equal cotangents, so the backward keeps no hidden state;
* batching: ``jax.vmap`` of the pullback over the k stacked cotangents equals the loop over them.

And on request: a ``custom_jvp`` rule's JVP (``vjp_jvp``), second order (``vjp_second``), the rule under a
sharded ``jax.jit`` or ``shard_map`` against one device (``vjp_sharded``).

This is the verify module that calls ``jax.vjp`` on the user's functions; ``tests/test_purity.py`` names it and
the modules of the modes above.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.layers.arguments import check_callable, check_count
from manualbp.verify import forensics, taylor, vjp_jvp, vjp_numeric, vjp_second, vjp_sharded
from manualbp.verify.precision import full_precision
from manualbp.verify.report import Report, Row
from manualbp.verify.rounding import move
from manualbp.verify.tolerances import (
    ERROR_MODEL,
    FINITE_DIFFERENCE,
    FINITE_DIFFERENCE_MODEL,
    Rule,
    Tolerance,
    resolve_verdict,
    tolerance,
)
from manualbp.verify.verdict import not_compared_row, structure_row
from manualbp.verify.vjp_inputs import Inputs, check_custom_vjp_rule, describe, phase, reraise_rule_error, trace_both
from manualbp.verify.vjp_rows import row as _row

FINITE_DIFFERENCES = "finite-differences"
MODES = ("directions", "exhaustive")
LINEAR = (2.0, 0.5)  # a and b of the linearity row: powers of two (a u and b w are exact), and a u + b w reaches
# beyond the range of u alone (a backward that clips its cotangent at the cotangents' own scale is caught)


@full_precision
def check_vjp(fn, reference=None, *args, kwargs: dict | None = None, argnums=None, k: int = 3, seed: int = 0,
              jit: bool = False, nondet_tol: float = 0.0, title: str | None = None, verdict: str = "auto",
              expected_vjp=None, where=None, rtol: float | None = None, atol: float | None = None,
              mode: str = "directions", order: int = 1, mesh=None, in_specs=None, out_specs=None) -> Report:
    """Check ``fn``'s VJP (hand-written) at ``args``, against ``reference``, ``expected_vjp`` or finite differences.

    Args:
      fn: a JAX function whose derivative was written by hand (usually a ``jax.custom_vjp``, or a
        ``jax.custom_jvp``), called as ``fn(*args, **kwargs)``; any pytree output.
      reference: the same computation left to autodiff (same signature and output structure); or None (or
        "finite-differences"): no reference, fn's VJP is judged against its own forward by float64 finite
        differences and the Taylor test.
      *args: the point to check at; pytrees welcome. Floating array leaves are differentiated; integer and
        boolean arrays (indices, masks) and Python scalars are side inputs and are not.
      kwargs: keyword arguments of fn (and of the reference): floating arrays among them are differentiated
        (rows named by the keyword), anything else is passed through as it is (static options).
      argnums: an int, a parameter name, or a tuple of them: differentiate only these arguments (a TypeError
        if one of them holds an integer leaf). Default: every argument's floating array leaves.
      k: how many random standard normal cotangents (drawn with ``seed``); with no reference, also how many
        random directions per input.
      jit: run the VJPs under ``jax.jit`` (one compiled program per quantity) instead of op by op.
      nondet_tol: how far (max abs) two calls of the backward may differ and still pass "backward twice", for
        a backward nondeterministic by design (atomic scatter-adds on a GPU); 0: bitwise equal.
      title: the report's title.
      verdict: how the rows against a reference or ``expected_vjp`` are judged, as in ``compare``: "auto",
        "fixed", "conditioning" or "error-model".
      expected_vjp: ``expected_vjp(primals, cotangent) -> cotangents``: the rule the author intends, checked
        instead of the gradient (``primals``: the tuple of positional arguments; keyword arguments are passed as
        keywords; it returns one cotangent per positional argument, None for one without). With a reference,
        the reference still checks the outputs.
      where: ``{input name: boolean array}`` (or a function of fn's arguments returning one): only the entries
        marked True are compared; the others (a kink where the rule takes one side, an overflow region) are
        excluded from every row of that input and counted in its note. Directions of the finite differences
        do not move them.
      rtol, atol: the caller's own tolerance for the rows compared with the reference (or expected_vjp; or the
        finite differences): normwise and elementwise relative ``rtol``, plus an absolute ``atol`` as in
        ``numpy.allclose``; judged by the fixed rule and stated in the header.
      mode: with no reference, "directions" (k random directions per input) or "exhaustive" (every entry of
        every input, for each cotangent: the whole cotangent against finite differences).
      order: 2 adds second-order rows: the VJP of fn's VJP against the reference's (or expected_vjp's, or
        finite differences of fn's own VJP); a rule that cannot be differentiated twice fails there, saying so.
      mesh: a ``jax.sharding.Mesh``: also run fn's VJP with its inputs sharded over the mesh and compare it with
        the one-device result. ``in_specs``: the inputs' ``PartitionSpec`` (a prefix tree of ``args``; default:
        axis 0 of every array split over the mesh's first axis where it divides, else replicated). With
        ``out_specs`` too, fn is per-device code (collectives inside) run under ``jax.shard_map``; the one-device
        result is the same shard_map over one device.

    Returns:
      A ``Report``: rows named by fn's own parameter names ("q", "params['W']", "args[2]" for ``*args``), in
      this order: "output" rows (with a reference); each differentiable input's cotangent row (against the
      reference's, expected_vjp's or finite differences; with no reference also "<x> taylor"); for a
      custom_jvp rule "<x> jvp" (and "<x> jvp taylor") and "<x> jvp/vjp"; with ``order=2`` "<x> second order";
      then "<x> backward twice", "<x> linear in cotangent", "<x> vmap over cotangents"; with a mesh
      "output on N devices" and "<x> on N devices".

    Raises:
      ValueError if ``reference`` runs a ``jax.custom_vjp`` (fn itself, say): its VJP would not be autodiff's.
      ValueError/TypeError naming the argument or output: ``fn`` and ``reference`` with different output
      structures, shapes or dtypes; an integer argument in ``argnums``; a backward returning the wrong number,
      structure, shapes or dtypes of cotangents; NaN/Inf in the inputs. An error raised inside fn's forward,
      its backward, the reference or expected_vjp is re-raised (as its built-in type) saying which.
    """
    check_callable("check_vjp", "fn", fn, "(the one whose VJP was written by hand)")
    check_count("check_vjp", "seed", seed, minimum=0)
    name, original = _name(fn), fn
    if mesh is not None and out_specs is not None:  # per-device code: the one-device check runs it under shard_map too
        fn = vjp_sharded.per_device(fn, vjp_sharded.one_device(mesh), in_specs, out_specs, kwargs or {})
    spelled = isinstance(reference, str) and reference == FINITE_DIFFERENCES
    numeric = spelled or (reference is None and expected_vjp is None)
    _validate(reference, numeric or reference is None, k, nondet_tol, order, mode, rtol, atol, expected_vjp)
    ref_name = _name(reference) if callable(reference) else None
    inputs = Inputs.build(name, args, argnums, kwargs, original)
    masks = inputs.masks(where)
    out_spec, rules = trace_both(name, ref_name, fn, reference, inputs)
    check_custom_vjp_rule(fn, name, inputs)
    g_fn = inputs.closed(fn)
    cts = _cotangents(out_spec, k + 1, seed)  # the last: the linearity row's second cotangent
    work = _working_precision(name, g_fn, inputs, cts[0])
    more = _linearity_cotangents(cts[0], cts[k], work)  # pulled back with the k: one program
    y_fn, pull, pulled, vmapped = _vjps(g_fn, inputs.diff, cts[:k] + more, jit, name=name, inputs=inputs, batch=k)
    got = pulled[:k]
    inputs.check_cotangent_dtypes(name, got[0])
    dtype = _lowest_precision([*inputs.diff, *jax.tree_util.tree_leaves(y_fn)])
    given = None if rtol is None and atol is None else _given_tolerance(rtol, atol, dtype, numeric)

    ctx = _Context(name, fn, inputs, masks, cts, k, seed, jit, dtype, g_fn, pull, got, y_fn)
    ctx.linear, ctx.vmapped, ctx.work = pulled[k:], vmapped, _lowest_precision_of([dtype, work])
    if numeric:
        report = _numeric(ctx, mode, given, rules)
    else:
        report = _compared(ctx, reference, ref_name, expected_vjp, verdict, given, y_fn, rules)
    report.title = title or report.title
    if order == 2:
        ctx.extend(report, vjp_second.rows(ctx, reference if callable(reference) else None, expected_vjp,
                                           report.tolerance, report.verdict, numeric))
    own = tolerance(ctx.work)  # fn against itself: the rounding of the precision it computes in
    ctx.extend(report, _reentrancy_rows(ctx, nondet_tol, own))
    ctx.extend(report, _linearity_rows(ctx, own))
    ctx.extend(report, _vmap_rows(ctx, own))
    if mesh is not None:
        ctx.extend(report, vjp_sharded.rows(ctx, original, mesh, in_specs, out_specs, own))
    report.set_diagnoser(_diagnoser(report.rows, ctx.values, ctx.sizes))
    return report


def _validate(reference, numeric, k, nondet_tol, order, mode, rtol, atol, expected_vjp):
    if isinstance(reference, str) and not numeric:
        raise ValueError(f"check_vjp: reference must be a function, None or {FINITE_DIFFERENCES!r}, got {reference!r}")
    if not numeric and not callable(reference):
        raise TypeError(f"check_vjp: reference must be a function, None or {FINITE_DIFFERENCES!r}, got "
                        f"{type(reference).__name__}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"check_vjp: k must be a positive int (the number of random cotangents), got {k!r}")
    if not nondet_tol >= 0:
        raise ValueError(f"check_vjp: nondet_tol must be >= 0, got {nondet_tol!r}")
    if order not in (1, 2):
        raise ValueError(f"check_vjp: order must be 1 or 2 (second order: the VJP of the VJP), got {order!r}")
    if mode not in MODES:
        raise ValueError(f"check_vjp: mode must be one of {MODES}, got {mode!r}")
    if mode != "directions" and (not numeric or expected_vjp is not None):
        raise ValueError("check_vjp: mode='exhaustive' is the finite-difference check's (reference=None); with a "
                         "reference or expected_vjp every entry of every cotangent is compared already")
    for what, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and not v >= 0:
            raise ValueError(f"check_vjp: {what} must be >= 0, got {v!r}")
    if expected_vjp is not None and not callable(expected_vjp):
        raise TypeError(f"check_vjp: expected_vjp must be a function (primals, cotangent) -> cotangents, got "
                        f"{type(expected_vjp).__name__}")
    if expected_vjp is not None and isinstance(reference, str):
        raise ValueError("check_vjp: expected_vjp is what the backward must equal; finite differences measure the "
                         "gradient, which such a rule is meant to differ from: pass reference=None or a function")


def _given_tolerance(rtol, atol, dtype, numeric) -> Tolerance:
    base = FINITE_DIFFERENCE if numeric else tolerance(dtype)
    return Tolerance(norm=base.norm if rtol is None else rtol, elem=base.elem if rtol is None else rtol,
                     atol=atol or 0.0)


def _given_text(tol: Tolerance | None) -> str:
    """The caller's tolerance, for the title (what ``_given_tolerance`` built: its own rtol, or the table's)."""
    return "" if tol is None else f"; rtol={tol.norm:g} (elementwise {tol.elem:g}), atol={tol.atol:g} given"


class _Context:
    """What every part of one check shares: the call, its cotangents, fn's VJP and the values behind each row."""

    def __init__(self, name, fn, inputs, masks, cts, k, seed, jit, dtype, g_fn, pull, got, y):
        self.name, self.fn, self.inputs, self.masks, self.cts, self.k, self.seed, self.jit = (
            name, fn, inputs, masks, cts, k, seed, jit)
        self.dtype, self.g_fn, self.pull, self.got, self.y = dtype, g_fn, pull, got, y
        self.looped = [_stack(got, i) for i in range(len(inputs.diff))]  # the k cotangents of each input, stacked
        self.values = {}  # row index -> (fn's value, what it was compared with): for the diagnoses
        self.sizes = {}  # row index -> {description: size} a scale may be named by (the device count)

    def extend(self, report: Report, rows):
        """Append rows given as (row, fn's value, the other value[, sizes]) (None values: no diagnosis by fit)."""
        for row, a, b, *sizes in rows:
            report.rows.append(row)
            if a is not None:
                self.values[len(report.rows) - 1] = (a, b)
            if sizes:
                self.sizes[len(report.rows) - 1] = sizes[0]

    def masked(self, quantity: str, i: int, got, want, tol, **judged) -> tuple:
        """The row of input i's quantity, entries excluded by where= set equal on both sides (and counted)."""
        mask, shape = self.masks[i], self.inputs.diff[i].shape
        note = judged.pop("note", "")
        if mask is not None:
            if not mask.any():
                return not_compared_row(self.name, quantity, "excluded: every entry excluded by where=", shape), None, None
            full = np.broadcast_to(mask, np.shape(want))
            got = np.where(full, np.asarray(got), np.asarray(want))
            note = "; ".join(filter(None, [note, f"{int(mask.size - mask.sum())} of {mask.size} entries excluded "
                                                 "(where=)"]))
        return _row(self.name, quantity, got, want, tol, shape=shape, note=note, **judged), got, want


def _numeric(ctx: _Context, mode: str, given, rules) -> Report:
    """No reference: the float64 point, fn's VJP there, finite differences and the Taylor test."""
    tol = given or FINITE_DIFFERENCE
    with jax.enable_x64(True):
        x64 = ctx.inputs.astype(jnp.float64)
        g64 = x64.closed(ctx.fn)
        with phase(f"the backward of {ctx.name} (in float64)"):
            jaxpr = jax.make_jaxpr(lambda d, c: jax.vjp(g64, d)[1](c))(x64.diff, _cotangents(
                jax.eval_shape(g64, x64.diff), 1, ctx.seed)[0])
            if np.dtype(ctx.dtype) == np.dtype(np.float64):  # the check's own cotangents and VJPs are float64 already
                us, pulls = ctx.cts[:ctx.k], ctx.got
            else:
                us = _cotangents(jax.eval_shape(g64, x64.diff), ctx.k, ctx.seed)
                pulls = _vjps(g64, x64.diff, us, jit=True)[2]
        work = vjp_numeric.lowest_float(jaxpr)
        ln = vjp_numeric.line(g64, x64.diff, float(jnp.finfo(work).eps))
        rng = np.random.default_rng(ctx.seed + 1)
        noisy = vjp_numeric.noise(ln, us)
        if mode == "exhaustive":
            fd = vjp_numeric.exhaustive_rows(ctx.name, ln, x64.labels, ctx.masks, us, pulls, ctx.k, tol, noisy)
        else:
            fd = vjp_numeric.fd_rows(ctx.name, ln, x64.labels, ctx.masks, us, pulls, ctx.k, tol, rng, noisy)
        rows = fd + vjp_numeric.taylor_rows(ctx.name, ln, x64.labels, ctx.masks, us, pulls, rng, noisy)
        if vjp_jvp.applies(rules):
            rows += vjp_jvp.numeric_rows(ctx.name, g64, ln, x64, ctx.masks, us, pulls, ctx.k, tol, rng)
        ctx.numeric = (x64, g64, ln, us, pulls, work, rng)
    low = "" if np.dtype(work) == np.dtype(np.float64) else f"; {ctx.name} computes in {np.dtype(work).name} inside"
    where = "every coordinate" if mode == "exhaustive" else f"{ctx.k} random direction{'s' * (ctx.k > 1)} per input"
    report = Report(f"check_vjp: {ctx.name} vs finite differences of its own forward in float64 ({where}) and the "
                    f"Taylor test; no reference{low}{_given_text(given)}", "float64", tol, verdict=Rule.FINITE_DIFFERENCE,
                    error_model=FINITE_DIFFERENCE_MODEL, reference="the finite difference", manual="fn",
                    subject="function")
    ctx.extend(report, rows)
    return report


def _compared(ctx: _Context, reference, ref_name, expected_vjp, verdict, given, y_fn, rules) -> Report:
    """Against ``jax.vjp`` of the reference, or against the intended rule ``expected_vjp``."""
    inputs, name, dtype, k = ctx.inputs, ctx.name, ctx.dtype, ctx.k
    tol = given or tolerance(dtype)
    if expected_vjp is not None:
        exp_name = _name(expected_vjp)
        want = [_expected(name, expected_vjp, exp_name, inputs, ct, ctx.jit) for ct in ctx.cts[:k]]
        truth = _expected_truth(name, expected_vjp, exp_name, inputs, ctx.cts[:k])
        against = f"the intended rule {exp_name} (expected_vjp, not the gradient)"
        label = exp_name
    else:
        g_ref = inputs.closed(reference)
        y_ref, _, want, _ = _vjps(g_ref, inputs.diff, ctx.cts[:k], ctx.jit, name=f"the reference {ref_name}")
        truth = _truth(reference, inputs, ctx.cts[:k])
        against = f"jax.vjp of {ref_name}"
        label = ref_name
    judged_by = Rule.FIXED if given is not None else resolve_verdict(verdict, dtype, "check_vjp")
    if judged_by is Rule.ERROR_MODEL and truth is None:
        raise ValueError(f"check_vjp: verdict 'error-model' needs {label} in a higher precision than {dtype.name}, "
                         f"and it could not be run there")
    unmeasured = ""
    if judged_by is Rule.CONDITIONING and truth is None:  # nothing measures the reference's own error: the fixed rule
        judged_by = Rule.FIXED
        unmeasured = (f"; {label}'s own error is not measured ({dtype.name}: no higher precision"
                      f"{'' if jax.config.read('jax_enable_x64') else ' with 64-bit mode off'}), so the fixed rule")
    plain = "" if any(rules.values()) else f"; {name} runs no custom_vjp/custom_jvp: its VJP is autodiff's too"
    outputs = f", outputs vs {ref_name}" if expected_vjp is not None and reference is not None else ""
    report = Report(f"check_vjp: {name} vs {against} ({k} random cotangent{'s' * (k > 1)}{outputs}{plain}{unmeasured}"
                    f"{_given_text(given)})", dtype.name, tol, verdict=judged_by, reference=label, manual="fn",
                    subject="function")
    if reference is not None:
        if expected_vjp is not None:
            with phase(f"the reference {ref_name}"):
                y_ref = (jax.jit(inputs.closed(reference)) if ctx.jit else inputs.closed(reference))(inputs.diff)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(y_fn), jax.tree_util.tree_leaves(y_ref)):
            ctx.extend(report, [(_row(name, "output" + jax.tree_util.keystr(path), a, b, tol), a, b)])
    for i, label_i in enumerate(inputs.labels):
        if isinstance(want[0][i], Row):  # expected_vjp gave no cotangent for this input
            ctx.extend(report, [(want[0][i], None, None)])
            continue
        ref_i = _stack(want, i)
        ctx.extend(report, [ctx.masked(label_i, i, ctx.looped[i], ref_i, tol, verdict=judged_by,
                                       truth=None if truth is None else _stack(truth, i))])
    if vjp_jvp.applies(rules) and expected_vjp is None:
        ctx.extend(report, vjp_jvp.reference_rows(ctx, reference, tol, judged_by))
    elif vjp_jvp.applies(rules):
        ctx.extend(report, vjp_jvp.consistency_rows(ctx, tol))
    return report


def _expected(name, expected_vjp, exp_name, inputs: Inputs, ct, jit: bool, high=None) -> list:
    """expected_vjp's cotangent for each differentiable leaf (a failing structure row where it gives none); with
    ``high``, every floating input and the cotangent cast to that dtype first (the truth)."""
    paths = jax.tree_util.tree_flatten_with_path((tuple(inputs.args), inputs.kwargs))[0]
    if any(paths[j][0][0].idx == 1 for j in inputs.diff_index):
        raise ValueError("check_vjp: expected_vjp returns cotangents for the positional arguments only; pass the "
                         "differentiated inputs positionally (keyword arguments may carry static options)")
    up = lambda v: v.astype(high) if high is not None and hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.inexact) else v  # noqa: E731

    def at(diff, ct):
        args, kwargs = inputs.rebuild(diff, cast=up)
        return expected_vjp(tuple(args), ct, **kwargs)

    with phase(f"the intended rule {exp_name}"):
        out = (jax.jit(at) if jit else at)([up(a) for a in inputs.diff], jax.tree_util.tree_map(up, ct))
    if not isinstance(out, (tuple, list)) or len(out) != len(inputs.args):
        got = f"{len(out)} cotangent(s)" if isinstance(out, (tuple, list)) else f"a bare {describe(out)}"
        raise ValueError(f"check_vjp: expected_vjp {exp_name} returns {got} but {len(inputs.args)} positional "
                         f"argument(s) were given ({', '.join(inputs.names)}); return a tuple with one cotangent per "
                         "argument (None for one without a gradient)")
    found = {jax.tree_util.keystr(kp): v
             for kp, v in jax.tree_util.tree_flatten_with_path(tuple(out), is_leaf=lambda v: v is None)[0]}
    result = []
    for j, label in zip(inputs.diff_index, inputs.labels):
        v = found.get(jax.tree_util.keystr(paths[j][0][1:]))
        if v is None:
            result.append(structure_row(name, label, "missing", f"expected_vjp {exp_name} returns no cotangent for "
                                        f"{label} ({describe(inputs.leaves[j])})", np.shape(inputs.leaves[j])))
        else:
            result.append(v)
    return result


def _expected_truth(name, expected_vjp, exp_name, inputs: Inputs, cts):
    """expected_vjp in the highest precision (as ``_truth``), or None."""
    high = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
    if all(jnp.finfo(leaf.dtype).eps <= jnp.finfo(high).eps for leaf in inputs.diff):
        return None
    try:
        out = [_expected(name, expected_vjp, exp_name, inputs, ct, True, high) for ct in cts]
    except (TypeError, ValueError):
        return None
    return None if any(isinstance(v, Row) for v in out[0]) else out


def _diagnoser(judged, values, extra_sizes):
    """A failing row: the fit of fn's value against what it was compared with, scales named by the sizes of the
    value's own axes; a Taylor row: fn's derivative along the line against the one its forward's changes give."""

    def context_of(i):
        shape = np.shape(values[i][1]) if i in values and not isinstance(values[i][1], taylor.Taylor) else ()
        sizes = {f"the size {n} of axis {a}": n for a, n in enumerate(shape[1:], start=1) if n > 1}
        return forensics.Context(sizes={**sizes, **extra_sizes.get(i, {})}, axes={0: "cotangent"})

    def values_of(i):
        if i not in values:
            return np.nan, np.nan
        a, b = values[i]
        if isinstance(b, taylor.Taylor):
            return a, taylor.rate(a, b).estimate.reshape(np.shape(a))
        return a, b

    return forensics.diagnoser(judged, values_of, context_of, manual="fn")


def _name(f) -> str:
    """A function's name for rows and messages (a functools.partial's is its function's, however deep)."""
    while getattr(f, "__name__", None) is None and getattr(f, "func", None) is not None:
        f = f.func
    return getattr(f, "__name__", None) or type(f).__name__


def _stack(vjps, i):
    """The k values of input i, stacked on a new axis 0 (NumPy)."""
    return np.stack([np.asarray(v[i]) for v in vjps])


def _cotangents(out_spec, k: int, seed: int) -> list:
    """k cotangents for the outputs: standard normal on floating leaves, float0 zeros on integer ones.

    Drawn with NumPy: nothing to compile, whatever the shapes.
    """
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(out_spec)
    return [jax.tree_util.tree_unflatten(treedef, [
        jax.device_put(rng.standard_normal(s.shape).astype(s.dtype)) if jnp.issubdtype(s.dtype, jnp.inexact)
        else np.zeros(s.shape, jax.dtypes.float0) for s in leaves]) for _ in range(k)]


def _vjps(g, diff, cts, jit: bool, name: str | None = None, inputs: Inputs | None = None, batch: int = 0):
    """(g(diff), pullback, [v^T J_g(diff) for v in cts], vmapped): one linearization, the pullbacks, one program
    under jit; ``vmapped``: ``jax.vmap`` of the pullback over the first ``batch`` cotangents stacked (in the same
    program), or the exception it raised (None for batch 0).

    The pullback is a pytree (its residuals are the leaves): it leaves a jitted function intact. ``name``: an error
    in g's forward (its forward rule) or its backward says which, and whose (under jit the forward is traced first,
    on shapes alone, to tell them apart); ``inputs``: JAX's own complaint about a custom_vjp's cotangents inside g is
    reworded naming them.
    """
    def run(diff, cts, batched: bool):
        y, pull = jax.vjp(g, diff)
        return y, pull, [pull(ct)[0] for ct in cts], _vmapped(pull, cts[:batch]) if batched else None

    forward = phase(f"the forward of {name} (under jax.vjp)") if name else contextlib.nullcontext()
    backward = phase(f"the backward of {name}") if name else contextlib.nullcontext()
    reworded = reraise_rule_error(name, inputs) if inputs is not None else contextlib.nullcontext()
    if jit:
        program = jax.jit(run, static_argnames="batched")
        if batch:
            try:
                return program(diff, cts, True)
            except Exception as e:  # noqa: BLE001  (the backward may not batch: its row says so; the rest runs alone)
                vmap_error = e
        with forward:
            jax.eval_shape(lambda d: jax.vjp(g, d)[0], diff)
        with backward, reworded:
            y, pull, pulled, _ = program(diff, cts, False)
        return y, pull, pulled, vmap_error if batch else None
    with forward:
        y, pull = jax.vjp(g, diff)
    with backward, reworded:
        pulled = [pull(ct)[0] for ct in cts]
    vmapped = None
    if batch:
        try:
            vmapped = _vmapped(pull, cts[:batch])
        except Exception as e:  # noqa: BLE001
            vmapped = e
    return y, pull, pulled, vmapped


def _vmapped(pull, cts) -> list:
    """``jax.vmap`` of the pullback over the stacked floating leaves of ``cts`` (float0 cotangents of integer
    outputs held fixed): the k cotangents of each input, stacked."""
    leaves0, treedef = jax.tree_util.tree_flatten(cts[0])
    floating = [jnp.issubdtype(v.dtype, jnp.inexact) for v in leaves0]

    def one(float_ct):
        it = iter(float_ct)
        return pull(jax.tree_util.tree_unflatten(treedef, [next(it) if f else v for f, v in zip(floating, leaves0)]))[0]

    columns = zip(*[[v for v, f in zip(jax.tree_util.tree_leaves(ct), floating) if f] for ct in cts])
    return jax.vmap(one)([jnp.stack(col) for col in columns])


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
    return _lowest_precision_of([leaf.dtype for leaf in leaves])


def _lowest_precision_of(dtypes):
    floats = [np.dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return max(floats, key=lambda d: jnp.finfo(d).eps) if floats else np.dtype(np.float32)


def _working_precision(name, g, inputs: Inputs, ct):
    """The lowest floating dtype anywhere in fn's forward and backward (traced, not run): a kernel with float64
    inputs and outputs that computes in float32 inside rounds like float32."""
    try:
        return vjp_numeric.lowest_float(jax.make_jaxpr(lambda d, c: jax.vjp(g, d)[1](c))(inputs.diff, ct))
    except Exception:  # noqa: BLE001  (a backward that cannot be traced runs eagerly: its inputs' precision then)
        return _lowest_precision(inputs.diff)


def _linearity_cotangents(u, w, work) -> list:
    """The cotangents the linearity row pulls back besides u: w, a u + b w, and a u + b w moved by one rounding step
    of the working precision ``work`` (``ERROR_MODEL.samples`` times: the pullback's own rounding)."""
    a, b = LINEAR
    leaves, treedef = jax.tree_util.tree_flatten(u)
    mixed = jax.tree_util.tree_unflatten(treedef, [
        jax.device_put((a * np.asarray(x, np.float64) + b * np.asarray(y, np.float64)).astype(x.dtype))
        if jnp.issubdtype(x.dtype, jnp.inexact) else x for x, y in zip(leaves, jax.tree_util.tree_leaves(w))])
    return [w, mixed, *(_moved_cotangent(mixed, i, work) for i in range(ERROR_MODEL.samples))]


def _linearity_rows(ctx: _Context, tol) -> list:
    """pull(a u + b w) against a pull(u) + b pull(w): a backward is linear in its cotangent, whatever it computes.

    Judged by the conditioning rule: the pullback's own rounding, measured at cotangents one rounding step away, is
    what the two sides may differ by where the fixed tolerance cannot hold.
    """
    a, b = LINEAR
    pw, mixed, *moved = ctx.linear
    rows = []
    for i, label in enumerate(ctx.inputs.labels):
        got = np.asarray(mixed[i])
        want = (a * np.asarray(ctx.got[0][i], np.float64) + b * np.asarray(pw[i], np.float64)).astype(got.dtype)
        errors = [np.asarray(m[i], np.float64) - np.asarray(got, np.float64) for m in moved]
        rows.append(ctx.masked(f"{label} linear in cotangent", i, got, want, tol, verdict=Rule.CONDITIONING,
                               errors=errors,
                               why=f"the backward is not linear in its cotangent: pull({a:g} u + {b:g} w) is not "
                                   f"{a:g} pull(u) + {b:g} pull(w) (it clips, normalizes or branches on the cotangent?)"))
    return rows


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else ""


def _moved_cotangent(ct, seed: int, work):
    """The cotangent with every floating entry moved by one rounding step, of its dtype or of the working precision
    ``work`` if that is lower (float0 zeros stay)."""
    leaves, treedef = jax.tree_util.tree_flatten(ct)
    return jax.tree_util.tree_unflatten(treedef, [
        move(v, seed + 7 * j, float(jnp.finfo(_lowest_precision_of([v.dtype, work])).eps))
        if jnp.issubdtype(v.dtype, jnp.inexact) else v for j, v in enumerate(leaves)])


def _reentrancy_rows(ctx: _Context, nondet_tol: float, tol) -> list:
    """pullback(ct) again, after a forward and backward at other inputs: bitwise equal to the first call.

    Eagerly the backward's Python code runs on every call, so the first of the compared VJPs is the first call.
    Under jit one program traces the pullback, a forward and backward at other inputs, and the pullback again
    (Python state gives two different results), and runs twice (a nondeterministic kernel gives two different runs).
    """
    inputs, g, pull, ct, first = ctx.inputs, ctx.g_fn, ctx.pull, ctx.cts[0], ctx.got[0]
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
        if ctx.jit:
            (first, again), (_, rerun) = twice(pull, ct), twice(pull, ct)
        else:
            disturb()
            again = rerun = pull(ct)[0]
    except Exception as e:  # noqa: BLE001  (e.g. a leaked tracer: state kept from an earlier trace)
        why = f"calling the pullback again raised {type(e).__name__}: the backward keeps hidden state"
        return [(_row(ctx.name, f"{label} backward twice", None, None, tol, shape=a.shape, failed=why), None, None)
                for label, a in zip(inputs.labels, first)]
    rows = []
    for i, (label, a, b, c) in enumerate(zip(inputs.labels, first, again, rerun)):
        judged = ctx.masked(f"{label} backward twice", i, b, a, tol, exact=nondet_tol, why=why, note=note)
        if judged[0].ok and judged[0].compared:
            judged = ctx.masked(f"{label} backward twice", i, c, a, tol, exact=nondet_tol, note=note,
                                why=why + " (between two runs of one compiled program)")
        rows.append(judged)
    return rows


def _vmap_rows(ctx: _Context, tol) -> list:
    """jax.vmap of the pullback over the k stacked cotangents (computed with them) vs the loop over them."""
    if isinstance(ctx.vmapped, Exception):  # a backward that cannot be batched is a failing row, not a crash
        why = f"the backward does not run under jax.vmap: {type(ctx.vmapped).__name__}: {_first_line(ctx.vmapped)}"
        return [(_row(ctx.name, f"{label} vmap over cotangents", None, None, tol, shape=leaf.shape, failed=why),
                 None, None) for label, leaf in zip(ctx.inputs.labels, ctx.inputs.diff)]
    return [ctx.masked(f"{label} vmap over cotangents", i, np.asarray(b), a, tol)
            for i, (label, a, b) in enumerate(zip(ctx.inputs.labels, ctx.looped, ctx.vmapped))]
