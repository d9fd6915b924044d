"""The import rule of docs/architecture.md, checked on the source: every module imports only from
its own layer or the layers below (imports inside functions included; ``if TYPE_CHECKING:``
imports are exempt), losses never import networks, and methods never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labelreg"
SHARED_METHOD_MODULES = {"base", "registry", "pairwise", "sources", "runs", "__init__"}

#: The layers of docs/architecture.md, lowest first: module name prefixes (a package name
#: covers its modules). A module may import its own layer and the layers before it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("labelreg._tf", "labelreg.errors", "labelreg.registry", "labelreg.files",
              "labelreg.item_outputs", "labelreg.logs", "labelreg.cpu")),
    ("config", ("labelreg.config", "comir_tf.config")),
    ("building blocks", ("labelreg.ops", "labelreg.metrics", "labelreg.losses",
                         "labelreg.networks", "labelreg.data", "labelreg.visualise",
                         "labelreg.variational", "labelreg.scoring", "labelreg.curves",
                         "labelreg.serving", "labelreg.refinement",
                         "comir_tf.contrastive", "comir_tf.data", "comir_tf.equivariance",
                         "comir_tf.generate", "comir_tf.register", "comir_tf.synthetic",
                         "comir_tf.tiramisu")),
    ("method protocol and schemas", ("labelreg.methods.base", "labelreg.methods.registry",
                                     "labelreg.methods.label_driven_config",
                                     "labelreg.methods.image_driven_config",
                                     "labelreg.methods.learnsim_config")),
    ("engine", ("labelreg.engine", "labelreg.export.publish", "labelreg.export.registration")),
    ("methods", ("labelreg.methods", "labelreg.pair_inference")),
    ("top", ("labelreg.infer", "labelreg.export", "labelreg.evaluation", "labelreg.crossval",
             "labelreg.cli", "labelreg.apps", "comir_tf.evaluate",
             "labelreg", "comir_tf")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> int | None:
    """The index of the most specific layer entry matching ``module``."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of the project, at any depth, except those under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from a.b import c" uses a.b.c: a module of its own, or a name of a.b (the
            # layer of the most specific matching prefix decides either way).
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found
            if name.split(".")[0] in ("labelreg", "comir_tf")]


SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "comir_tf").rglob("*.py")])


def test_every_module_has_a_layer():
    assert [p for p in SOURCES if _layer(_module_name(p)) is None] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_only(path):
    module = _module_name(path)
    own = _layer(module)
    bad = []
    for line, name in _imports(path):
        target = _layer(name)
        if target is not None and target > own:
            bad.append(f"line {line}: {name} ({LAYERS[target][0]})")
    assert not bad, f"{module} ({LAYERS[own][0]}) imports from above: {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "losses").glob("*.py")), ids=lambda p: p.name)
def test_losses_never_import_networks(path):
    bad = sorted(n for _, n in _imports(path) if n.startswith("labelreg.networks"))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_never_import_each_other(path):
    # Shared: the protocol, the registry, the pairwise base, the data sources, run restoring and
    # the TF-free schema modules (*_config), which several methods may read.
    methods = {p.stem for p in (PACKAGE / "methods").glob("*.py")
               if p.stem not in SHARED_METHOD_MODULES and not p.stem.endswith("_config")}
    bad = sorted(n for _, n in _imports(path) if n.startswith("labelreg.methods.")
                 and n.split(".")[2] in methods and n.split(".")[2] != path.stem)
    assert not bad, f"{path.name} imports {bad}"


def test_the_rule_catches_an_upward_import_inside_a_function(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from labelreg.methods.runs import load_trained_run\n")
    names = [name for _, name in _imports(bad)]
    assert names == ["labelreg.methods.runs.load_trained_run"]
    assert _layer(names[0]) > _layer("labelreg.engine.checkpoints")
    typed = tmp_path / "y.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from labelreg.methods.base import Method\n")
    assert _imports(typed) == []
