"""The import rule of docs/architecture.md, checked on the source: losses never import networks,
methods never import each other, and the building blocks never import the engine or methods."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labelreg"
SHARED_METHOD_MODULES = {"base", "registry", "pairwise", "sources", "__init__"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "losses").glob("*.py")), ids=lambda p: p.name)
def test_losses_never_import_networks(path):
    bad = sorted(n for n in _imports(path) if n.startswith("labelreg.networks"))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_never_import_each_other(path):
    # Shared: the protocol, the registry, the pairwise base, the data sources and the TF-free
    # schema modules
    # (*_config), which several methods may read.
    methods = {p.stem for p in (PACKAGE / "methods").glob("*.py")
               if p.stem not in SHARED_METHOD_MODULES and not p.stem.endswith("_config")}
    bad = sorted(n for n in _imports(path) if n.startswith("labelreg.methods.")
                 and n.split(".")[2] in methods and n.split(".")[2] != path.stem)
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("folder", ["ops", "losses", "networks", "data"])
def test_building_blocks_never_import_the_top(folder):
    for path in sorted((PACKAGE / folder).glob("*.py")):
        bad = sorted(n for n in _imports(path)
                     if n.startswith(("labelreg.methods", "labelreg.engine", "labelreg.cli",
                                      "labelreg.export")))
        assert not bad, f"{folder}/{path.name} imports {bad}"
