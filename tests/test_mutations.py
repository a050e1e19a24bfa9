"""The verdicts, measured: every catalog bug FAILs ``compare`` at its own layer; every clean twin PASSes.

The catalog, the scenes and the bugs left out (and why) are in ``tests/mutants/``; the full matrix (float32,
finite differences, twin training, clean models x seeds) is ``scripts/mutation_matrix.py``.
"""

import pathlib

import jax
import jax.numpy as jnp
import mutants
import numpy as np
import pytest
from jax.sharding import Mesh
from mutants import twin
from mutants.catalog import CATALOG, CONTROLS, KIND, parallel_catalog
from mutants.twin import TWIN_CASES

import manualbp as mbp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_catalog_has_a_bug_in_every_layer_family():
    """Every layer file has a mutant: in CATALOG, or, for the collectives of the tensor-parallel layers (which show
    only on several devices, tests/test_tensor_parallel.py), in ``parallel_catalog``."""
    # no backward to mutate
    support = {"__init__.py", "base.py", "arguments.py", "window.py", "walk.py", "code_key.py", "collectives.py"}
    families = {p.name for p in (ROOT / "manualbp" / "layers").glob("*.py")} - support
    one_device = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("batch", "model"))
    covered = {m.family for m in CATALOG + parallel_catalog(one_device)}
    assert families - covered == set(), f"layer files with no mutant: {sorted(families - covered)}"
    assert len(CATALOG) >= 30
    assert len({m.name for m in CATALOG}) == len(CATALOG)


@pytest.mark.parametrize("mutant", CATALOG, ids=lambda m: m.name)
def test_compare_catches_the_bug_in_its_own_row(mutant):
    case = mutants.case(mutant)
    report = mutants.run_compare(case)
    verdict = mutants.judge(mutant, case, report)
    assert verdict.caught, f"{mutant.name} ({mutant.bug}) PASSED compare:\n{report}"
    assert verdict.forward_clean, f"{mutant.name} changed a forward row; only its backward may differ:\n{report}"
    assert verdict.right_row, (f"{mutant.name}: first failing row {verdict.first}, expected {case.where!r} with a "
                               f"quantity matching {mutant.expect!r}:\n{report}")
    diagnosis = report.first_failure.diagnosis
    if mutant.name not in KNOWN_MISSES:
        assert diagnosis.kind == KIND[mutant.name], (f"{mutant.name} is a {KIND[mutant.name]!r} bug, diagnosed as "
                                                     f"{diagnosis.kind!r}: {diagnosis.text}")


# mutants whose kind the diagnosis does not name, and why (docs/forensics.md quotes the figure)
KNOWN_MISSES = {
    "MaxPoolTiesSplit": "the error sits on tied windows, a set only the layer's input shows (not the row's arrays)",
    "GlobalMaxPoolTiesSplit": "the same: the tied maxima of each channel are not visible in dL/dx and its reference",
    "BidirectionalPaddingReversed": "the error sits on the padded sequences, 2 of the batch's 3: not a small set",
    "SoftmaxCEMaskIgnored": "two errors at once: masked rows get a gradient and the others a wrong scale (N for "
                            "sum(m)); neither alone explains the difference",
}


def test_the_diagnosis_names_the_kind_of_at_least_80_percent_and_every_scale_sign_and_rearrangement():
    assert set(KIND) == {m.name for m in CATALOG}  # every mutant labelled, from the bug alone
    assert set(KNOWN_MISSES) <= set(KIND)
    assert not {KIND[name] for name in KNOWN_MISSES} & {"scale", "sign", "rearranged"}
    assert len(KNOWN_MISSES) <= 0.2 * len(CATALOG)


TUPLE_INPUT = [m for m in CATALOG if isinstance(mutants.case(m, dtype=np.float32).x, tuple)]


@pytest.mark.parametrize("mutant", TUPLE_INPUT, ids=lambda m: m.name)
def test_gradcheck_checks_every_floating_leaf_of_a_tuple_input(mutant):
    """(x, lengths), (x, h0): gradcheck draws directions over the input's floating leaves too, and catches the bug."""
    case = mutants.case(mutant)
    report = mbp.gradcheck(case.model, case.head, case.params, case.x, case.y, case.mask, k=3)
    assert any(r.quantity.startswith("dL/dx") and r.compared for r in report.rows), str(report)
    assert report.status == "FAIL", f"{mutant.name} ({mutant.bug}) PASSED gradcheck:\n{report}"


@pytest.mark.parametrize(("name", "scene", "layer"), mutants.clean_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_clean_twin_passes(name, scene, layer):
    """Every clean model of the catalog PASSes in float32 (float64 and more seeds: scripts/mutation_matrix.py)."""
    report = mutants.run_compare(mutants.build(scene, layer, jnp.float32))
    assert report.ok, f"false FAIL of the clean model {name}:\n{report}"


@pytest.mark.parametrize(("name", "scene", "layer"), CONTROLS, ids=lambda v: v if isinstance(v, str) else "")
def test_the_textbook_copies_pass_without_their_bug(name, scene, layer):
    """A mutant written out in the test module (not the real layer's code) is that code with ONE line wrong."""
    report = mutants.run_compare(mutants.build(scene, layer))
    assert report.ok, f"{name} without a bug does not match the reference:\n{report}"


def test_twin_run_catches_the_clipping_bug():
    """Clipping is not a layer: only a twin run against optax's clip can judge it (c below every leaf's norm)."""
    case = next(c for c in TWIN_CASES if c.kind == "optimizer")
    divergence = twin.run(case, mutated=True, steps=3)
    assert np.all(np.isfinite(divergence.grad)) and np.all(divergence.grad <= divergence.tolerance.norm), \
        "the gradients agree (clipping is applied after them):\n" + divergence.summary()
    first = divergence.first_failure
    assert first is not None and (first["step"], first["kind"]) == (1, "update"), divergence.summary()
    # the real clip in the same kind of run agrees: tests/test_clip.py::test_twin_run_manual_clip_equals_optax_clip
