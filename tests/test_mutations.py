"""The verdicts, measured: every catalog bug FAILs ``compare`` at its own layer; every clean twin PASSes.

The catalog, the scenes and the bugs left out (and why) are in ``tests/mutants/``; the full matrix (float32,
finite differences, twin training, clean models x seeds) is ``scripts/mutation_matrix.py``.
"""

import pathlib

import jax
import jax.numpy as jnp
import mutants
import numpy as np
import optax
import pytest
from mutants.catalog import CATALOG, CONTROLS
from mutants.heads import clip_each_leaf

import manualbp as mbp
from manualbp.training import data

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_catalog_has_a_bug_in_every_layer_family():
    families = {p.name for p in (ROOT / "manualbp" / "layers").glob("*.py")} - {"__init__.py", "base.py", "window.py"}
    covered = {m.family for m in CATALOG}
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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "scene", "layer"), mutants.clean_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_clean_twin_passes(name, scene, layer, dtype):
    report = mutants.run_compare(mutants.build(scene, layer, dtype))
    assert report.ok, f"false FAIL of the clean model {name}:\n{report}"


@pytest.mark.parametrize(("name", "scene", "layer"), CONTROLS, ids=lambda v: v if isinstance(v, str) else "")
def test_the_textbook_copies_pass_without_their_bug(name, scene, layer):
    """A mutant written out in the test module (not the real layer's code) is that code with ONE line wrong."""
    report = mutants.run_compare(mutants.build(scene, layer))
    assert report.ok, f"{name} without a bug does not match the reference:\n{report}"


def _twin(optimizer, reference_optimizer):
    d = data.spirals(n_train=64, n_test=16)
    model = mbp.Sequential(mbp.Dense(8), mbp.Tanh(), mbp.Dense(2))
    params, _ = model.init(jax.random.key(0), (2,), jnp.float64)
    return mbp.train_twin(model, mbp.SoftmaxCrossEntropy(), params, d, optimizer=optimizer,
                          reference_optimizer=reference_optimizer, steps=3, batch_size=32, key=jax.random.key(1))


def test_twin_run_catches_a_clipping_bug():
    """Clipping is not a layer: only a twin run against optax's clip can judge it (c below every leaf's norm)."""
    c = 1e-3
    bad = _twin(optax.chain(clip_each_leaf(c), optax.sgd(0.5)), optax.chain(optax.clip_by_global_norm(c), optax.sgd(0.5)))
    assert np.all(np.isfinite(bad.divergence.max_rel))
    assert not bad.divergence.ok and bad.divergence.first_exceed[0] == 1, bad.divergence.summary()
    # the real clip in the same run agrees: tests/test_clip.py::test_twin_run_manual_clip_equals_optax_clip
