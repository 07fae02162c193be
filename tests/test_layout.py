"""The library's modules import one another in one direction only: its rooms (a top-level module, or a subpackage
taken whole) stand on floors, and every import runs down to a lower floor. A circle between rooms is how a module
starts to need another that needs it back; these tests find one before it lands."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "hf_instruct"


def room(module: str) -> str:
    """`hf_instruct.data.suite.world` -> "data", `hf_instruct.collator` -> "collator"."""
    return module.split(".")[1]


def imported_modules(path: Path) -> set[str]:
    """The hf_instruct modules a file imports, anywhere in it (a function's late import included), by full name."""
    parts = path.relative_to(REPO).with_suffix("").parts
    package = parts if path.name == "__init__.py" else parts[:-1]
    package = package[:-1] if package[-1] == "__init__" else package
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} if node.module else {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.startswith("hf_instruct.")}


def room_graph() -> dict[str, set[str]]:
    """Each room and the other rooms it imports."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":  # the package's face: it imports the rooms it exports, nothing imports it
            continue
        here = room(".".join(path.relative_to(REPO).with_suffix("").parts))
        graph.setdefault(here, set()).update(room(name) for name in imported_modules(path) if room(name) != here)
    return graph


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each room's floor: 0 for a room that imports none of the others, else one above the highest it imports.
    Raises on a circle, naming it."""
    floor: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise AssertionError(f"the rooms import each other in a circle: {' -> '.join((*path, name))}")
        if name not in floor:
            floor[name] = 1 + max((visit(other, (*path, name)) for other in graph.get(name, ())), default=-1)
        return floor[name]

    for name in graph:
        visit(name, ())
    return floor


def test_the_rooms_import_in_one_direction():
    floor = floors(room_graph())
    # the model stands alone (it is copied into every checkpoint as remote code), the small helpers at the bottom,
    # the command at the top, and the data below everything that trains on it
    assert floor["models"] == floor["utils"] == 0
    assert floor["cli"] == max(floor.values())
    assert all(floor["data"] < floor[name] for name in ("collator", "evaluation", "stages", "pipeline"))


def test_a_circle_is_found():
    graph = {"data": {"utils"}, "utils": set(), "collator": {"data"}}
    assert floors(graph) == {"data": 1, "utils": 0, "collator": 2}
    graph["data"].add("collator")  # data/mixing.py importing the collator, as it once did
    with pytest.raises(AssertionError, match="data -> collator -> data"):
        floors(graph)
