"""The one rule between the halves, enforced by reading the source.

manualbp/ never calls JAX autodiff; reference/ never calls a layer's forward/backward/init.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
AUTODIFF = {"grad", "vjp", "jvp", "value_and_grad", "linearize", "jacrev", "jacfwd", "hessian", "custom_vjp",
            "custom_jvp", "linear_transpose", "closure_convert"}
MANUAL_METHODS = {"forward", "backward", "init", "backward_trace"}


def _sources(package):
    return sorted((ROOT / package).rglob("*.py"))


def _jax_aliases(tree):
    """Names bound to jax or a jax submodule in this module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "jax"}
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            names |= {a.asname or a.name for a in node.names if a.name not in AUTODIFF}
    return names


def autodiff_uses(path):
    tree = ast.parse(path.read_text())
    jax_names = _jax_aliases(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jax":
            hits += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in AUTODIFF]
        if isinstance(node, ast.Attribute) and node.attr in AUTODIFF:
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in jax_names:
                hits.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
    return hits


@pytest.mark.parametrize("path", _sources("manualbp"), ids=lambda p: str(p.relative_to(ROOT)))
def test_manual_code_never_calls_autodiff(path):
    assert autodiff_uses(path) == []


@pytest.mark.parametrize("path", _sources("reference"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reference_never_calls_manual_layers(path):
    tree = ast.parse(path.read_text())
    calls = [f"{path.name}:{n.lineno} {ast.unparse(n.func)}" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in MANUAL_METHODS]
    assert calls == []


def test_the_checker_catches_autodiff(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import jax\nfrom jax import vjp\ng = jax.grad(f)\nh = jax.experimental.custom_vjp\n")
    assert len(autodiff_uses(bad)) == 3
    ok = tmp_path / "ok.py"
    ok.write_text("import jax.numpy as jnp\nimport manualbp as mbp\nf = mbp.value_and_grad(m, h)\ny = jnp.sum(x)\n")
    assert autodiff_uses(ok) == []


def test_manual_modules_mirror_reference():
    layer_files = {"activations", "dense", "losses", "nodes", "sequential", "layer", "backprop"}
    manual = {p.stem for p in _sources("manualbp")}
    ref = {p.stem for p in _sources("reference")} - {"__init__"}
    assert layer_files <= manual
    assert ref <= manual, f"reference files without a manual twin: {sorted(ref - manual)}"
