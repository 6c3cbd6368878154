"""The project's imports go one way: no cycles between modules or packages, each package imports only those below.

Read from the source with `ast`, nothing imported. Module-level imports count wherever they sit (inside
`with workflow.unsafe.imports_passed_through():`, `try:` or `if` blocks), except under `if TYPE_CHECKING:`.
The layering is also checked for imports inside functions, so a cycle cannot hide in a lazy import.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("engine", "activities", "api")
TOP_MODULES = ("worker.py",)

# What each package may import from the project (a package, or one module of it). The data flows
# YAML -> language -> interpreter -> activities -> providers; runtime wires them together; api and the CLI use it.
ALLOWED: dict[str, frozenset[str]] = {
    "engine.storage": frozenset(),
    "engine.language": frozenset(),
    "activities": frozenset({"engine.storage", "engine.language"}),
    # The workflows run in Temporal's sandbox: of the activities, only their request and result types.
    "engine.interpreter": frozenset({"engine.language", "activities.types"}),
    "engine.runtime": frozenset({"engine.storage", "engine.language", "engine.interpreter", "activities"}),
    "engine.testing": frozenset(
        {"engine.storage", "engine.language", "engine.interpreter", "activities", "engine.runtime"}
    ),
    "api": frozenset({"engine.storage", "engine.language", "engine.interpreter", "engine.runtime"}),
    "worker": frozenset({"engine.storage", "engine.language", "engine.interpreter", "activities", "engine.runtime"}),
    "engine.cli": frozenset(
        {
            "engine.storage",
            "engine.language",
            "engine.interpreter",
            "activities",
            "engine.runtime",
            "engine.testing",
            "engine.commands",
            "api",
            "worker",
        }
    ),
    "engine.commands": frozenset(
        {"engine.storage", "engine.language", "engine.interpreter", "activities", "engine.runtime", "engine.testing"}
    ),
    "engine": frozenset(),
}

# Imports that break the layering and are waiting for an edit elsewhere: (importing module, imported module).
# Each entry must still be true (the test fails when one is gone, so the list only shrinks).
PENDING: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the project module imported
    line: int
    module_level: bool


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in TOP_MODULES:
        found[name.removesuffix(".py")] = ROOT / name
    return found


MODULES = _modules()


def _project_module(name: str) -> str | None:
    """The most specific project module that `name` (a module, or a module and an attribute) names."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    body: list[ast.stmt], module_level: bool = True
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, module_level
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_nodes(node.body, module_level)
            yield from _import_nodes(node.orelse, module_level)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _import_nodes(node.body, False)
        elif isinstance(node, ast.ClassDef):
            yield from _import_nodes(node.body, module_level)
        else:  # with, try, for, while, match: their blocks run where they stand
            for field in ("body", "orelse", "finalbody"):
                yield from _import_nodes(getattr(node, field, []), module_level)
            for handler in getattr(node, "handlers", []):
                yield from _import_nodes(handler.body, module_level)
            for case in getattr(node, "cases", []):
                yield from _import_nodes(case.body, module_level)


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    for node, module_level in _import_nodes(ast.parse(path.read_text(), str(path)).body):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names = [f"{origin}.{alias.name}" for alias in node.names]  # a submodule, or a name in `origin`
        for target in sorted({t for t in map(_project_module, names) if t is not None and t != module}):
            yield Import(module, target, node.lineno, module_level)


IMPORTS = [i for module, path in MODULES.items() for i in _imports_of(module, path)]


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "engine" and len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one node, as a cycle through it (Tarjan, then a walk)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        if len(component) < 2:
            continue
        start = min(component)
        path, seen = [start], {start}
        while True:  # follow edges inside the component back to the start
            nxt = sorted(w for w in graph[path[-1]] if w in component)
            back = [w for w in nxt if w == start]
            if back and len(path) > 1:
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:
                break
            path.append(fresh[0])
            seen.add(fresh[0])
        cycles.append([*path, start])
    return cycles


def _where(source_group: str, target_group: str, group: dict[str, str]) -> list[str]:
    return sorted(
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if i.module_level and group[i.source] == source_group and group[i.target] == target_group
    )


def test_the_sources_are_found() -> None:
    expected = {"engine.runtime.intake", "activities.segments", "engine.interpreter.workflow", "api.app", "worker"}
    assert expected <= set(MODULES)
    assert any(i.source == "engine.interpreter.workflow" and i.target == "activities.types" for i in IMPORTS)


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.module_level:
            graph[i.source].add(i.target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles between modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_between_packages() -> None:
    group = {m: package_of(m) for m in MODULES}
    graph: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.module_level and group[i.source] != group[i.target]:
            graph.setdefault(group[i.source], set()).add(group[i.target])
            graph.setdefault(group[i.target], set())
    problems = []
    for cycle in _cycles(graph):
        problems.append(" -> ".join(cycle))
        for a, b in itertools.pairwise(cycle):
            problems.extend(f"    {line}" for line in _where(a, b, group))
    assert not problems, "import cycles between packages:\n" + "\n".join(problems)


def _allowed(source: str, target: str) -> bool:
    source_package, target_package = package_of(source), package_of(target)
    if source_package == target_package:
        return True
    return any(target == a or target.startswith(a + ".") for a in ALLOWED[source_package])


def test_each_package_imports_only_the_layers_below_it() -> None:
    assert set(ALLOWED) == {package_of(m) for m in MODULES}, "a new package: say in ALLOWED what it may import"
    wrong = sorted(
        f"{i.source}:{i.line} imports {i.target}{'' if i.module_level else ' (inside a function)'}"
        for i in IMPORTS
        if not _allowed(i.source, i.target) and (i.source, i.target) not in PENDING
    )
    assert not wrong, "imports against the layering (see ALLOWED):\n" + "\n".join(wrong)


def test_activities_do_not_import_the_runtime() -> None:
    found = {
        (i.source, i.target)
        for i in IMPORTS
        if package_of(i.source) == "activities" and package_of(i.target) == "engine.runtime"
    }
    assert found - set(PENDING) == set(), f"activities import engine.runtime: {sorted(found - set(PENDING))}"
    stale = {p for p in PENDING if p[0].startswith("activities.") and p not in found}
    assert not stale, f"no longer imported, remove from PENDING: {sorted(stale)}"


def test_pending_exceptions_are_still_needed() -> None:
    present = {(i.source, i.target) for i in IMPORTS}
    stale = sorted(p for p in PENDING if p not in present or _allowed(*p))
    assert not stale, f"remove from PENDING (the import is gone or allowed now): {stale}"
