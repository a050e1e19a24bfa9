"""How the package installs and imports: the twin under a name nothing can shadow, in either import order."""

import pathlib
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code, cwd):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_users_reference_py_cannot_break_import_manualbp(tmp_path):
    (tmp_path / "reference.py").write_text("WHO = 'the user'\n")
    out = _python("import manualbp as mbp, reference\n"
                  "print(reference.WHO, mbp.reference.__name__, callable(mbp.reference.value_and_grad))", tmp_path)
    assert out.split() == ["the", "user", "manualbp.reference", "True"]


@pytest.mark.slow
def test_the_twin_imports_first_or_second(tmp_path):
    _python("import manualbp.reference as ref, manualbp as mbp; assert ref is mbp.reference", tmp_path)
    _python("import manualbp as mbp; from manualbp import reference as ref; assert ref.forward", tmp_path)


def test_import_reference_from_the_repo_root_is_the_installed_twin():
    """Scripts in the repo may `import reference`: one module object, one registry of reference rules."""
    out = _python("import reference, manualbp, sys\n"
                  "print(reference is manualbp.reference, reference.forward is manualbp.reference.forward,\n"
                  "      sorted(k for k in sys.modules if k.split('.')[0] == 'reference'))", ROOT)
    assert out.strip() == "True True ['reference']"


def test_pyproject_lists_every_package_of_the_tree():
    """setuptools gets an explicit package list (the twin is mapped from reference/): it must not miss a folder."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "manualbp").rglob("__init__.py")}
    assert set(config["packages"]) == tree | {"manualbp.reference"}
    assert config["package-dir"] == {"manualbp.reference": "reference"}


def test_every_data_file_of_the_package_is_package_data():
    """A file that is not Python (the digits, their attribution) reaches a wheel only if pyproject names it."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    data = {}
    for path in (ROOT / "manualbp").rglob("*"):
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            package = ".".join(path.parent.relative_to(ROOT).parts)
            data.setdefault(package, set()).add(path.name)
    assert data == {"manualbp.training": {"digits.npz", "digits_attribution.txt"}}
    assert {k: set(v) for k, v in declared.items()} == data


def test_the_public_names_are_sorted():
    """``__all__`` in alphabetical order, so a reader finds a name and a new one has one place to go."""
    import manualbp as mbp
    import manualbp.layers

    for module in (mbp, manualbp.layers):
        assert module.__all__ == sorted(module.__all__), module.__name__
        assert all(hasattr(module, name) for name in module.__all__)
