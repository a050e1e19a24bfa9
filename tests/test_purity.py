"""The one rule between the halves, and the floor plan, enforced by reading the source.

manualbp/ never calls JAX autodiff; reference/ never calls a layer's forward/backward/init; only the
modules named in ``CALLS_REFERENCE`` import the reference; imports point down the floor plan; and
reference/ mirrors manualbp/layers/ file for file.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
AUTODIFF = {"grad", "vjp", "jvp", "value_and_grad", "linearize", "jacrev", "jacfwd", "hessian", "custom_vjp",
            "custom_jvp", "linear_transpose", "closure_convert"}
MANUAL_METHODS = {"forward", "backward", "init", "backward_trace"}

# the manual modules that may import the reference (to compare with it, or to train/time its path beside manual)
CALLS_REFERENCE = {
    "manualbp/verify/check_layer.py",
    "manualbp/verify/compare.py",
    "manualbp/verify/register.py",
    "manualbp/training/step.py",
    "manualbp/training/twin_diagnosis.py",  # a DIVERGED twin step replayed: the reference gradient at that point
    "manualbp/cli/benchmarks/contenders.py",  # every benchmark's jax.grad contender
}

# the manual modules that may call autodiff, and exactly what: check_vjp and its modes differentiate the USER's
# functions (fn and its reference: a custom_jvp's JVP, second order, the VJP on a mesh); the bridge wraps a manual
# backward as a jax.custom_vjp (and refuses second order with a custom_jvp); highprec takes a scatter-add's 0/1
# placement matrix as jax.jacfwd of the primitive (exact, no gradient of a layer)
CALLS_AUTODIFF = {
    "manualbp/verify/highprec.py": {"jacfwd"},
    "manualbp/verify/check_vjp.py": {"vjp"},
    "manualbp/verify/vjp_jvp.py": {"jvp"},
    "manualbp/verify/vjp_second.py": {"vjp"},
    "manualbp/verify/vjp_sharded.py": {"vjp"},
    "manualbp/bridge.py": {"custom_vjp", "custom_jvp"},
}

# floor plan: what each part of manualbp may import (besides itself); imports point down
MAY_IMPORT = {
    "layers": set(),
    "backprop.py": {"layers"},
    "bridge.py": {"layers"},
    "models.py": {"layers"},
    "testing.py": {"verify"},
    "verify": {"layers", "backprop.py", "reference"},
    "training": {"layers", "backprop.py", "verify", "reference"},
    "cli": {"layers", "backprop.py", "models.py", "verify", "training", "reference"},
}
# the layer support files that have no reference twin: the protocol, the argument checks, the window geometry, the
# attention kernels, the collective pairs of the tensor-parallel layers, the walk over a model's layers, the compiled
# programs' key
LAYER_SUPPORT = {"__init__", "base", "arguments", "window", "flash", "flash_pallas", "collectives", "walk", "code_key"}
# the reference's own modules: dispatch + taps, and the jax.grad entry points
REFERENCE_SUPPORT = {"__init__", "dispatch", "grad"}


def _sources(package):
    return sorted((ROOT / package).rglob("*.py"))


def _rel(path):
    return str(path.relative_to(ROOT))


def _jax_aliases(tree):
    """Names bound to jax or a jax submodule in this module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "jax"}
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            names |= {a.asname or a.name for a in node.names if a.name not in AUTODIFF}
    return names


def autodiff_uses(path, allowed=frozenset()):
    """Every use of a JAX autodiff entry point in ``path``, except those named in ``allowed``."""
    tree = ast.parse(path.read_text())
    jax_names = _jax_aliases(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            hits += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in AUTODIFF]
        if isinstance(node, ast.Attribute) and node.attr in AUTODIFF - set(allowed):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in jax_names:
                hits.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    return hits


def imported_modules(path):
    """Every absolute module name ``path`` imports (``from a.b import c`` gives a.b and a.b.c)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _part(module: str) -> str | None:
    """The floor-plan part of a manualbp module name ("manualbp.verify.report" -> "verify"), or "reference"."""
    parts = module.split(".")
    if parts[0] == "reference" or parts[:2] == ["manualbp", "reference"]:
        return "reference"
    if parts[0] != "manualbp" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in MAY_IMPORT else f"{parts[1]}.py" if f"{parts[1]}.py" in MAY_IMPORT else None


@pytest.mark.parametrize("path", _sources("manualbp"), ids=_rel)
def test_manual_code_never_calls_autodiff(path):
    assert autodiff_uses(path, CALLS_AUTODIFF.get(_rel(path), ())) == []


@pytest.mark.parametrize("rel", sorted(CALLS_AUTODIFF))
def test_each_named_exception_uses_exactly_what_it_is_allowed(rel):
    """A named exception that no longer calls autodiff, or calls more than it is named for, fails."""
    path = ROOT / rel
    assert autodiff_uses(path, CALLS_AUTODIFF[rel]) == []
    for name in CALLS_AUTODIFF[rel]:
        assert autodiff_uses(path, CALLS_AUTODIFF[rel] - {name}) != [], f"{rel} no longer uses jax.{name}"


@pytest.mark.parametrize("path", _sources("reference"), ids=_rel)
def test_reference_never_calls_manual_layers(path):
    tree = ast.parse(path.read_text())
    calls = [f"{path.name}:{n.lineno} {ast.unparse(n.func)}" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in MANUAL_METHODS]
    assert calls == []


@pytest.mark.parametrize("path", _sources("reference"), ids=_rel)
def test_reference_imports_only_the_layers_of_manualbp(path):
    """The twin reads the layer types (to dispatch on them) and nothing else of the manual engine."""
    bad = {m for m in imported_modules(path)
           if m.startswith("manualbp") and _part(m) not in (None, "layers", "reference")}
    bad |= {m for m in imported_modules(path) if m == "manualbp"}
    assert bad == set()


def test_only_the_named_modules_import_the_reference():
    importers = {_rel(p) for p in _sources("manualbp") if any(_part(m) == "reference" for m in imported_modules(p))}
    assert importers == CALLS_REFERENCE


@pytest.mark.parametrize("path", [p for p in _sources("manualbp") if p.parent != ROOT / "manualbp"
                                  or p.name in MAY_IMPORT], ids=_rel)
def test_imports_point_down(path):
    rel = path.relative_to(ROOT / "manualbp").parts
    own = rel[0]
    allowed = MAY_IMPORT[own] | {own}
    parts = {_part(m) for m in imported_modules(path)} - {None}
    assert parts <= allowed, f"{_rel(path)} imports {sorted(parts - allowed)}"


def test_the_checker_catches_autodiff(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import jax\nfrom jax import vjp\ng = jax.grad(f)\nh = jax.experimental.custom_vjp\n")
    assert len(autodiff_uses(bad)) == 3
    ok = tmp_path / "ok.py"
    ok.write_text("import jax.numpy as jnp\nimport manualbp as mbp\nf = mbp.value_and_grad(m, h)\ny = jnp.sum(x)\n")
    assert autodiff_uses(ok) == []


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from manualbp.verify.report import Row\nfrom manualbp import reference\n")
    assert {_part(m) for m in imported_modules(bad)} - {None} == {"verify", "reference"}


def test_reference_mirrors_the_layers_file_for_file():
    layers = {p.stem for p in (ROOT / "manualbp" / "layers").glob("*.py")} - LAYER_SUPPORT
    ref = {p.stem for p in (ROOT / "reference").glob("*.py")} - REFERENCE_SUPPORT
    assert layers == ref, f"only in manualbp/layers: {sorted(layers - ref)}; only in reference: {sorted(ref - layers)}"


def test_every_layer_file_has_its_twin_and_its_tests():
    """Adding a layer (CONTRIBUTING.md): manualbp/layers/X.py, reference/X.py and tests/test_X.py, all three."""
    for path in sorted((ROOT / "manualbp" / "layers").glob("*.py")):
        if path.stem in LAYER_SUPPORT:
            continue
        assert (ROOT / "reference" / path.name).is_file(), f"{_rel(path)} has no reference/{path.name}"
        assert (ROOT / "tests" / f"test_{path.name}").is_file(), f"{_rel(path)} has no tests/test_{path.name}"
