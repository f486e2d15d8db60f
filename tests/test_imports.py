"""Issue 11 item 1: the package's modules import one another without a cycle, counting
function-local imports too (only ``if TYPE_CHECKING:`` blocks are left out), so that
imports go one way: core (errors, driver, model, sysfs) → serving (state, control,
daemon, fuse, process) → tools (cli, testing, migration, the plugin)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mdevfs"


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
    return found


def test_the_modules_import_one_another_without_a_cycle():
    graph = {p.stem: imports(p) for p in PACKAGE.glob("*.py")}
    state: dict[str, str] = {}

    def cycle_from(module: str, trail: list[str]) -> list[str] | None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return trail + [module, dep]
            if dep not in state:
                found = cycle_from(dep, trail + [module])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = cycle_from(module, [])
            assert found is None, f"import cycle: {' -> '.join(found)}"


def test_the_core_imports_nothing_that_serves_or_tools():
    """The model and the tree never reach up to the daemon, the launcher or the CLI."""
    upper = {"state", "control", "daemon", "fuse", "process", "cli", "testing", "migration",
             "namespace", "pytest_plugin", "uevent"}
    for core in ("errors", "driver", "model", "sysfs", "config"):
        assert not imports(PACKAGE / f"{core}.py") & upper, core
