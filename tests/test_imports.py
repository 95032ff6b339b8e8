"""Imports inside the package run one way: no module of ``rover_stream`` imports, however indirectly, one that
imports it back -- counting imports inside functions and under ``TYPE_CHECKING``, which would only hide a
cycle. And the library never imports the demo."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rover_stream"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file. ``from . import x`` counts as an
    import of the module ``x`` (not of the package's ``__init__``) when ``x`` is one."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
            found.update(submodules if len(submodules) == len(node.names) else [target, *submodules])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walk_sees_the_imports() -> None:
    assert "rover_stream.runtime" in GRAPH["rover_stream.transport.streaming"]
    assert "rover_stream.hub.engines.redis" in GRAPH["rover_stream.hub.factory"]  # inside a function


def test_no_import_cycle_in_the_package() -> None:
    assert cycles() == [], "\n".join(
        " <-> ".join(component) + "\n  " + "\n  ".join(f"{m} imports {sorted(GRAPH[m] & set(component))}"
                                                      for m in component) for component in cycles())


def test_the_library_never_imports_the_demo() -> None:
    library = [name for name in GRAPH if not name.startswith("rover_stream.demo")]
    offenders = {name: sorted(d for d in GRAPH[name] if d.startswith("rover_stream.demo")) for name in library}
    assert {name: demo for name, demo in offenders.items() if demo} == {}
