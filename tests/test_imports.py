"""The package's modules sit in layers, and imports go only down or sideways within a layer.

Counting function-local imports too (only ``if TYPE_CHECKING:`` blocks are left out), every
module of the package has a layer, no module imports one of a higher layer, and no two
modules import each other in a cycle. ``docs/architecture.md`` shows the same table.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mdevfs"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

#: lowest first; a module may import its own layer's modules and those of layers below
LAYERS = {
    "model": {"errors", "kparse", "driver", "pci", "kernel", "pcibus", "model", "config"},
    "view": {"nodes", "attributes", "pci_sysfs", "pci_tree", "tree"},
    "system": {"runtime", "mounts", "readiness", "namespace", "beneath"},
    "serving": {"faults", "journal", "state", "pcistate", "control", "uevent", "fuse", "trace",
                "daemon"},
    "launching": {"process", "zygote", "forker"},
    "tools": {"__init__", "__main__", "cli", "cli_capture", "cli_fleet", "testing",
              "pytest_plugin", "migration", "planner", "fleet", "record", "infer", "export",
              "umockdev", "capture", "driverdoc"},
}


def imports(path: Path) -> set[str]:
    """The sibling modules ``path`` imports (``from . import x``, ``from .x import y``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                if child.module:
                    found.add(child.module.split(".")[0])
                else:
                    found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found & {p.stem for p in PACKAGE.glob("*.py")}


def rank(module: str) -> int:
    return next(i for i, members in enumerate(LAYERS.values()) if module in members)


GRAPH = {p.stem: imports(p) for p in PACKAGE.glob("*.py")}


def test_every_module_has_exactly_one_layer():
    placed = [m for members in LAYERS.values() for m in members]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(GRAPH) - set(placed) == set(), "modules without a layer"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_nothing_of_a_higher_layer(module):
    upward = {dep for dep in GRAPH[module] if dep in GRAPH and rank(dep) > rank(module)}
    assert upward == set(), f"{module} ({list(LAYERS)[rank(module)]}) imports {upward}"


def test_the_modules_import_one_another_without_a_cycle():
    state: dict[str, str] = {}

    def cycle_from(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == "open":
                return trail + [module, dep]
            if dep not in state:
                found = cycle_from(dep, trail + [module])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state:
            found = cycle_from(module, [])
            assert found is None, f"import cycle: {' -> '.join(found)}"


def test_the_architecture_document_shows_the_same_layers():
    """Its table has a row per layer: ``| layer | `a`, `b`, … | what |``."""
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in LAYERS:
            rows[cells[0]] = set(re.findall(r"`([a-z_]+)`", cells[1]))
    assert rows == LAYERS
