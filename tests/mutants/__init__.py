"""Mutation testing of the verdicts: realistic one-line backward bugs that ``compare`` must catch, in the right row.

A PASS is worth what the checker would have caught. Each catalog entry (``catalog.CATALOG``) is a real layer
or head with ONE line of its backward wrong, the kind of slip a derivation or a port makes: a missing
transpose, a mean where a sum belongs, f' evaluated at the wrong point, a dropped term of the product rule,
a broken BPTT carry, ``.set`` where repeated ids need ``.add``, a container that loses a path. Each sits in
a small model (``scenes``) with random parameters (no zero bias, unit gamma or forget bias of 1 to hide a
bug), and must

- FAIL ``compare`` in float64, with every forward row and the loss still passing (only the backward differs);
- have its FIRST failing row on the mutated layer (its label: "<path> <name>"; a head's on its own row,
  "head <Name> dL/dlogits"; a container's own rule on the container's own dL/dx row), with the quantity
  the bug corrupts first (``Mutant.expect``). One exception, ``Mutant.inside``: a TransformerBlock whose
  SECOND residual loses its identity path corrupts dL/dy_1, the gradient between its two branches, which
  has no row of its own; the first row that shows it is the attention child's dL/dy, inside the block;
- and its clean twin (the same model with the real layer) must PASS, in float32 and float64.

Adding a mutant (a new layer file needs one: a test checks that every file of manualbp/layers/ has one):
subclass the real layer, override its ``backward`` (or the helper holding the line) with the one-line bug,
the right line in a comment, and decorate the class with ``@mutant_of(RealLayer)`` (``base``); then add a
``catalog.CATALOG`` entry with a scene where the bug shows and the regex of the quantity it corrupts first.

The collective bugs of the tensor-parallel layers (``collectives``: a psum forgotten, doubled or moved into the
forward, the two gathers confused) compute the right numbers on one device, so they are not in ``CATALOG`` (run on
the test process's one device) but in ``catalog.parallel_catalog(mesh)``, built and run on a 2 x 2 mesh in an
8-device subprocess by tests/test_tensor_parallel.py (every mesh of 1 to 8 devices: scripts/parallel_matrix.py).

``scripts/mutation_matrix.py`` runs the whole matrix (every mutant in both precisions, finite differences,
twin training, clean models x seeds) and prints the figures in docs/evidence.md.

Where a bug shows is part of the catalog. A rule that is wrong only at a kink shows only on inputs that sit
exactly on it, and a rule that coincides with the right one on some shapes shows only on others; elsewhere
the mutant computes the very numbers of the real layer and no checker can tell them apart. So each entry
picks a scene where its bug shows: ReLU'(0) = 1 and max-pool ties (split, or duplicated) meet zero-background
images, whose conv outputs are exactly 0 (ReLU) or exactly b (max-pool ties); the kernel flip a 3x3 kernel
(not 1x1), the swapped padding sides SAME padding with stride 2 (pads (0, 1), not symmetric), the pooling
count SAME padding (not VALID), ``.set`` for ``.add`` ids that repeat, the BPTT carry bugs T = 6 (not 1),
the missing transpose of a Dense a square W that is not symmetric, GlobalMaxPool2D's ties images of the
values 0, 1, 2 through a one-channel 1x1 conv (monotone per channel, so the ties stay exact), the causal mask
a causal attention.

Left out, because no checker can catch them on any input: a wrong rule for a gradient that is exactly zero
in exact arithmetic and stays zero under the bug (db of a Dense right before a BatchNorm: its sum of dy is
0, so a mean instead of a sum is 0 too), and any change to the gradient of an example a mask zeroes.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import manualbp as mbp
from manualbp.layers.base import children_of, name_of
from manualbp.verify.trace import label, walk
from mutants.catalog import CATALOG, CONTROLS, Mutant


class Case(NamedTuple):
    model: object
    head: object
    params: object
    x: object
    y: object
    mask: object
    where: str  # the label of the layer the first failing row must name


def draw_params(model, input_shape, dtype, rng):
    """Random parameters of ``model``'s structure: W-like leaves N(0, 1/fan_in), vectors N(0, 0.25).

    The shapes come from ``jax.eval_shape`` of ``init`` and the values from numpy, so nothing is compiled
    per shape. Vectors drawn around 0 (not the init's zero biases, unit gammas or forget bias of 1) leave
    no bug in a bias, gamma or gate hidden by a special value.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), input_shape, dtype)[0])

    def draw(s):
        fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 4
        return (rng.standard_normal(s.shape) / math.sqrt(fan_in)).astype(s.dtype)

    return jax.tree_util.tree_map(draw, shapes)


def locate(model, head, params, slot, inside=None) -> str:
    """The report label of ``slot`` in ``model`` (of its child ``inside``, if given); for a head, its own row's."""
    if slot is head:
        return f"head {name_of(head)}"
    if inside is not None:
        slot = dict(children_of(slot))[inside]
    return next(label(path, layer) for path, layer, _ in walk(model, params) if layer is slot)


def build(scene, slot, dtype=jnp.float64, seed=0, inside=None) -> Case:
    """The scene around ``slot`` at ``seed``: perturbed params and a batch, in ``dtype``."""
    sc = scene(slot)
    rng = np.random.default_rng(seed)
    params = draw_params(sc.model, sc.input_shape, dtype, rng)
    x, y, mask = sc.make(rng, dtype)
    return Case(sc.model, sc.head, params, x, y, mask, locate(sc.model, sc.head, params, slot, inside))


def case(mutant: Mutant, *, mutated: bool = True, dtype=jnp.float64, seed=0) -> Case:
    return build(mutant.scene, mutant.mutant if mutated else mutant.clean, dtype, seed, mutant.inside)


def run_compare(c: Case) -> mbp.Report:
    return mbp.compare(c.model, c.head, c.params, c.x, c.y, c.mask)


def diagnosis_of(report: mbp.Report):
    """The first failing row's diagnosis, computed afresh (``report.diagnoser``)."""
    return report.diagnoser(report.rows.index(report.first_failure))


class Verdict(NamedTuple):
    caught: bool  # compare FAILed
    first: tuple | None  # (layer, quantity) of the first failing row
    right_row: bool  # on the mutated layer, with the expected quantity
    forward_clean: bool  # every forward row and the loss pass (only the backward differs)


def judge(mutant: Mutant, c: Case, report: mbp.Report) -> Verdict:
    fail = report.first_failure
    first = None if fail is None else (fail.layer, fail.quantity)
    right = fail is not None and fail.layer == c.where and re.fullmatch(mutant.expect, fail.quantity) is not None
    forward = all(row.ok for row in report.rows if row.quantity.startswith("forward") or row.quantity == "loss")
    return Verdict(fail is not None, first, right, forward)


def clean_cases():
    """(name, scene, clean layer) for every distinct clean model of the catalog (scenes that differ only in
    the slot's mutant share one)."""
    seen, out = set(), []
    for mt in CATALOG:
        sc = mt.scene(mt.clean)
        batch = jax.tree_util.tree_leaves(sc.make(np.random.default_rng(0), np.float64), is_leaf=lambda v: v is None)
        key = (repr(sc.model), repr(sc.head), repr([None if v is None else (v.shape, float(v.sum())) for v in batch]))
        if key not in seen:
            seen.add(key)
            out.append((f"{mt.family}:{name_of(mt.clean)}@{mt.name}", mt.scene, mt.clean))
    return out


__all__ = ["CATALOG", "CONTROLS", "Case", "Mutant", "Verdict", "build", "case", "clean_cases", "diagnosis_of", "judge",
           "locate", "draw_params", "run_compare"]
