"""The package's own shape: shared checks in one leaf module, no import cycle, no private name crossing modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "backbone"


def relative_imports(path: Path) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom) and node.level]


def test_no_private_name_is_imported_from_another_module() -> None:
    crossing = [
        f"{path.relative_to(PACKAGE)}: {alias.name} from {node.module}"
        for path in PACKAGE.rglob("*.py")
        for node in relative_imports(path)
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert crossing == []


def test_the_shared_checks_import_nothing_of_the_package() -> None:
    assert relative_imports(PACKAGE / "_checks.py") == []


def imported_siblings(path: Path) -> set[str]:
    """The top-level package modules that ``path`` imports (``from .x import y`` and ``from . import x``)."""
    names = set()
    for node in relative_imports(path):
        if node.level != 1:
            continue
        if node.module:
            names.add(node.module.split(".")[0])
        else:
            names.update(alias.name for alias in node.names)
    return names


def test_no_module_imports_one_that_imports_it() -> None:
    graph = {path.stem: imported_siblings(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    cycles = sorted((a, b) for a, targets in graph.items() for b in targets if a in graph.get(b, set()))
    assert cycles == []
