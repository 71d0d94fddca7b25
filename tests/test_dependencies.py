"""What mtlrec imports is what pyproject declares: every third-party module imported at module
level is a core dependency, every other one (imported inside the function that needs it) belongs
to a core dependency or to an optional extra, and nothing imports scikit-learn (AUC and GAUC are
computed in closed form; only the tests compare them with sklearn)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, for the imports whose names differ
DISTRIBUTION = {
    "hydra": "hydra-core",
    "yaml": "pyyaml",
    "mlflow": "mlflow-skinny",
    "fbgemm_gpu": "fbgemm-gpu",
}
# Installed with --no-deps by scripts/install_torchrec.sh (torchrec's requirement names the CUDA
# fbgemm-gpu, which does not load without CUDA); the extra `torchrec` holds their dependencies.
NO_DEPS_INSTALLS = {"torchrec", "fbgemm-gpu"}
INSTALL_SCRIPT = ROOT / "scripts" / "install_torchrec.sh"


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement.split(";")[0]
        for stop in "<>=![ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower())
    return names


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: _requirement_names(v) for k, v in project["optional-dependencies"].items()}
    return _requirement_names(project["dependencies"]), extras


def _third_party(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
    else:
        return []
    roots = [n.split(".")[0] for n in names]
    return [r for r in roots if r not in sys.stdlib_module_names and r != "mtlrec"]


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, all imports): distribution name -> files importing it."""
    top: dict[str, set[str]] = {}
    anywhere: dict[str, set[str]] = {}
    for path in sorted((ROOT / "mtlrec").rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            for name in _third_party(node):
                anywhere.setdefault(DISTRIBUTION.get(name, name), set()).add(where)
        for node in tree.body:
            for name in _third_party(node):
                top.setdefault(DISTRIBUTION.get(name, name), set()).add(where)
    return top, anywhere


def test_module_level_imports_are_core_dependencies():
    core, _ = _declared()
    top, _ = _imports()
    undeclared = {name: files for name, files in top.items() if name not in core}
    assert undeclared == {}
    assert {"torch", "hydra-core", "omegaconf", "numpy", "pyarrow", "rich"} <= set(top)


def test_every_import_is_declared_in_core_or_an_extra():
    core, extras = _declared()
    optional = set().union(*(v for k, v in extras.items() if k != "dev"))
    _, anywhere = _imports()
    undeclared = {
        n: f
        for n, f in anywhere.items()
        if n not in core and n not in optional and n not in NO_DEPS_INSTALLS
    }
    assert undeclared == {}
    lazy = set(anywhere) - core - NO_DEPS_INSTALLS
    assert lazy == {
        "matplotlib",
        "mlflow-skinny",
        "onnx",
        "onnxruntime",
        "optuna",
        "tensorboard",
        "wandb",
    }
    for name in lazy:  # each optional package is in the extra the docs name for it
        assert any(
            name in extras[e] for e in ("plot", "mlflow", "onnx", "tune", "tensorboard", "wandb")
        )


def test_torchrec_is_installed_by_its_script_with_the_extras_dependencies():
    """torchrec and fbgemm go in with --no-deps; the script installs the extra's list too."""
    _, extras = _declared()
    _, anywhere = _imports()
    assert set(anywhere) >= NO_DEPS_INSTALLS
    script = INSTALL_SCRIPT.read_text()
    assert '--no-deps "torchrec==1.8.0" "$fbgemm"' in script
    assert 'fbgemm="fbgemm-gpu-cpu==1.8.0"' in script and 'fbgemm="fbgemm-gpu==1.8.0"' in script
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["torchrec"]:
        assert f'"{requirement}"' in script, requirement
    assert extras["torchrec"] >= {"tensordict", "torchmetrics", "pyre-extensions"}


def test_scikit_learn_is_no_dependency_and_never_imported():
    core, extras = _declared()
    _, anywhere = _imports()
    assert "scikit-learn" not in core and "sklearn" not in anywhere
    assert "scikit-learn" in extras["dev"]  # the tests compare the closed-form AUC with it


def test_pandas_is_used_where_declared_core():
    """pandas is core because the movielens source parses with it and `encode_raw` accepts a
    DataFrame; `mtlrec compare` and `--help` stay free of it (tests/commands/test_cli_shape.py)."""
    _, anywhere = _imports()
    assert {"mtlrec/data/sources/movielens.py", "mtlrec/data/encoders.py"} <= anywhere["pandas"]
    assert not any(f.startswith(("mtlrec/runs/", "mtlrec/report/")) for f in anywhere["pandas"])
