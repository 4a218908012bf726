"""The package's layers: every ``import`` in ``python/mper`` names a module of its own
layer or of an earlier one, in the order CONTRIBUTING.md states (read from there, so that
the rule and its check cannot drift apart). Static: the imports are read, not run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "python" / "mper"


def stated_layers(text: str) -> dict[str, int]:
    """``{top-level name: its layer's index}`` from the order CONTRIBUTING.md states: the
    line of ``a -> b, c -> ...`` (names sharing a layer separated by commas) opening with
    ``errors ->``."""
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("errors ->")]
    assert len(lines) == 1, "CONTRIBUTING.md states the layer order on one line opening with `errors ->`"
    return {name.strip(): index for index, layer in enumerate(lines[0].split("->")) for name in layer.split(",")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import of a ``mper`` module in the file, local imports
    inside functions included; ``from pkg import name`` counts as ``pkg.name`` where that
    is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parents, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "mper":
                yield node.lineno, target


def layer_of(module: str, layers: dict[str, int]) -> int:
    """The layer of ``mper.<top>...``; the package's own ``__init__`` (``mper``) comes first."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    top = parts[1]
    if top not in layers:
        pytest.fail(f"mper.{top} has no layer: add it to the layer order in CONTRIBUTING.md")
    return layers[top]


def upward_imports(layers: dict[str, int]) -> list[str]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in files}
    found = []
    for path in files:
        source = module_name(path)
        for line, target in imported_modules(path, known):
            if layer_of(target, layers) > layer_of(source, layers):
                found.append(f"{path.relative_to(REPO)}:{line}: {source} imports {target}, a later layer")
    return found


def test_no_module_imports_from_a_later_layer():
    layers = stated_layers((REPO / "CONTRIBUTING.md").read_text())
    assert upward_imports(layers) == []


def test_every_top_level_module_and_package_has_a_layer():
    layers = stated_layers((REPO / "CONTRIBUTING.md").read_text())
    tops = {path.stem for path in PACKAGE.glob("*.py")} | {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert sorted(tops - {"__init__"} - set(layers)) == []


def test_an_import_from_a_later_layer_is_found():
    """The check itself: with the layers reversed, what the package imports is upward."""
    layers = stated_layers((REPO / "CONTRIBUTING.md").read_text())
    reversed_layers = {name: -index for name, index in layers.items()}
    found = upward_imports(reversed_layers)
    assert any("python/mper/train/loop.py" in line and "imports mper.errors" in line for line in found)
