"""Every package the code imports is declared in pyproject.toml (the core list, or the extra of the feature that needs
it), so an install from the wheel has what it imports."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def declared() -> dict[str, set[str]]:
    """Distribution name -> where it is declared ('core' or the extras)."""
    where: dict[str, set[str]] = {}
    for group, requirements in [("core", PROJECT["dependencies"]), *PROJECT["optional-dependencies"].items()]:
        for requirement in requirements:
            where.setdefault(normalized(Requirement(requirement).name), set()).add(group)
    return where


def imported_modules() -> set[str]:
    names = set()
    for path in (ROOT / "lightning_sde").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"lightning_sde", "__future__"}


def test_every_imported_package_is_declared():
    distributions, where = packages_distributions(), declared()
    undeclared = {}
    for module in sorted(imported_modules()):
        names = {normalized(d) for d in distributions.get(module, [])}
        if not names:
            pytest.fail(f"{module} is imported but not installed here: declare it and install it")
        if not names & set(where):
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
