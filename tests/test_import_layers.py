"""The core packages import each other in one direction only.

``backup`` uses ``db`` (connections, the snapshot export), so nothing in ``db`` may reach
``backup``, directly or through another package: a cycle makes import order matter, and a
module that is half-initialised when its partner asks for a name fails only in some entry points.
Imports are read from the source with ``ast`` (function-level ones included, since they run too).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import hardening_pipeline

PACKAGE_ROOT = Path(hardening_pipeline.__file__).parent
PACKAGE = "hardening_pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``hardening_pipeline`` module ``path`` imports, anywhere in the file."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # "from package import module" imports the module too.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def layer(module: str) -> str:
    """The part of the project a module belongs to: ``db``, ``backup``, ``settings``..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        source = layer(module_name(path))
        for target in imported_modules(path):
            if layer(target) != source and layer(target) != PACKAGE:
                graph.setdefault(source, set()).add(layer(target))
    return graph


def reachable(graph: Mapping[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycle_between(graph: Mapping[str, set[str]], a: str, b: str) -> bool:
    return b in reachable(graph, a) and a in reachable(graph, b)


def test_the_import_reader_sees_what_it_must() -> None:
    # The guard's own guard: the known edges are found, so an empty graph cannot pass below.
    graph = layer_graph()
    assert "db" in graph["backup"]
    assert {"backup", "db"} <= graph["restore"]
    assert "settings" in graph["db"]
    # The way this project's cycle looked before the restore loader moved out of db/.
    assert cycle_between({**graph, "db": graph["db"] | {"backup"}}, "db", "backup")


def test_db_and_backup_do_not_import_each_other() -> None:
    graph = layer_graph()
    assert "backup" not in reachable(graph, "db"), (
        f"hardening_pipeline.db reaches hardening_pipeline.backup (db imports {graph['db']}); "
        f"restore-side code belongs in restore/, which may import both"
    )
    assert not cycle_between(graph, "db", "backup")


def test_settings_and_errors_import_no_other_part_of_the_project() -> None:
    # Every package reads settings; if settings imported one of them, that package would be in
    # a cycle with all the others.
    graph = layer_graph()
    assert graph.get("errors", set()) == set()
    assert graph.get("settings", set()) <= {"errors"}
