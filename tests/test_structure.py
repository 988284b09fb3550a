"""The structure of the package: no import cycles, no pydantic below the transport cut."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "eventbus"


def module_name(path: Path) -> str:
    """The dotted name of a module file under src/."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every eventbus module ``path`` imports, at any level (TYPE_CHECKING included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("eventbus")}


def import_graph() -> dict[str, set[str]]:
    """Module name to the eventbus modules it imports (only names that are modules)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path) & files.keys() - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle() -> None:
    """The checker itself sees a cycle of three modules, and none in a tree."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_the_package_imports_itself_back() -> None:
    """No chain of imports inside eventbus leads back to where it started."""
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None


def test_private_modules_import_only_within_their_package() -> None:
    """A package's parent never imports a private module of a package nested below it,
    except through that package (the Redis transport is reached as a package)."""
    graph = import_graph()
    for name, imports in graph.items():
        for imported in imports:
            if imported.startswith("eventbus.transports.redis."):
                assert name.startswith("eventbus.transports.redis"), (name, imported)


def test_transports_never_see_pydantic() -> None:
    """Nothing under eventbus/transports mentions pydantic: they move bytes and strings."""
    offenders = [
        str(path.relative_to(SRC))
        for path in (PACKAGE / "transports").rglob("*.py")
        if "pydantic" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
