"""engine/ is layered: a module imports only its own layer or lower ones, and sub-packages never
import each other in a cycle. Every import counts, also those inside functions and under
TYPE_CHECKING (read from the sources with ast: importing would miss the lazy ones).

Layers, low to high (docs: each package's docstring says what it may import):
  base (errors, model, clock, durations, text, ids, paths, sqlfile, sdnotify, users, linux)
  < schedule, config, store, notify < exec < agents, control, outbox
  < run (it composes the executors, local and agents) < ha < api < http < cli.
Some units of one layer must not import each other either (APART).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BASE = (
    "engine",
    "errors",
    "model",
    "clock",
    "durations",
    "text",
    "ids",
    "paths",
    "sqlfile",
    "sdnotify",
    "users",
    "linux",
)
LAYERS: dict[str, int] = {
    **dict.fromkeys(BASE, 0),
    **dict.fromkeys(("schedule", "config", "store", "notify"), 1),
    "exec": 2,
    **dict.fromkeys(("agents", "control", "outbox"), 3),  # outbox: delivers the notification outbox
    "run": 4,  # composes the executors: the local shims and the agent dispatcher
    "ha": 5,
    "api": 6,
    "http": 7,  # the node's HTTP listener: /metrics, /healthz (and the API's routes)
    "cli": 8,
}
#: Same layer, and still they must not import each other.
APART = {frozenset({"agents", "control"}), frozenset({"schedule", "store"}), frozenset({"config", "store"})}

Edge = tuple[str, str]  #: (importing module, imported module)


def engine_sources(root: Path = ROOT) -> dict[str, str]:
    """Module name -> source text of every module under engine/."""
    sources = {}
    for path in sorted((root / "engine").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        sources[".".join(parts)] = path.read_text()
    return sources


def _is_package(name: str, modules: Iterable[str]) -> bool:
    return any(m.startswith(name + ".") for m in modules)


def imports(sources: Mapping[str, str]) -> set[Edge]:
    """Every (importer, imported) pair between engine modules, wherever the import statement is."""
    modules = set(sources)
    edges: set[Edge] = set()
    for name, text in sources.items():
        package = name if _is_package(name, modules) or name == "engine" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, up level-1 packages
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join([*base, node.module] if node.module else base)
                else:
                    origin = node.module or ""
                # `from engine import schedule` imports the module engine.schedule, not just engine.
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in modules else origin for a in node.names]
            for target in targets:
                # `import engine.store.sqlite.db` names the module itself; keep the longest known prefix.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add((name, target))
    return edges


def unit(module: str) -> str:
    """The layer unit of a module: its sub-package or top-level module (`engine` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(edges: Iterable[Edge]) -> set[Edge]:
    """Imports of a higher layer, or between siblings kept apart."""
    found = set()
    for importer, imported in edges:
        a, b = unit(importer), unit(imported)
        if a != b and (LAYERS[b] > LAYERS[a] or frozenset({a, b}) in APART):
            found.add((importer, imported))
    return found


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected groups of more than one unit in the unit-level import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for importer, imported in edges:
        a, b = unit(importer), unit(imported)
        graph.setdefault(a, set())
        graph.setdefault(b, set())
        if a != b:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


# ---------------------------------------------------------------- the checker itself


def test_the_checker_sees_lazy_relative_and_type_checking_imports() -> None:
    sources = {
        "engine": "",
        "engine.errors": "",
        "engine.store": "",
        "engine.store.sqlite": "",
        "engine.store.sqlite.db": "from engine import errors\n",
        "engine.run": "",
        "engine.run.scheduler": "from . import loop\n",
        "engine.run.loop": "def f():\n    import engine.store.sqlite.db\n",
        "engine.agents": "",
        "engine.agents.dispatcher": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.run.scheduler import Scheduler\n"
        ),
    }
    assert imports(sources) == {
        ("engine.store.sqlite.db", "engine.errors"),
        ("engine.run.scheduler", "engine.run.loop"),
        ("engine.run.loop", "engine.store.sqlite.db"),
        ("engine.agents.dispatcher", "engine.run.scheduler"),
    }


def test_the_checker_finds_a_higher_layer_siblings_and_a_cycle() -> None:
    edges = {
        ("engine.store.sqlite.db", "engine.run.scheduler"),  # store -> run: upwards
        ("engine.agents.dispatcher", "engine.control"),  # same layer, kept apart
        ("engine.run.loop", "engine.agents.dispatcher"),  # downwards: fine
        ("engine.config.fields", "engine.schedule.cron"),  # same layer: fine
        ("engine.cli", "engine.api"),  # downwards: fine
        ("engine.text", "engine.errors"),  # within base: fine
    }
    assert violations(edges) == {
        ("engine.store.sqlite.db", "engine.run.scheduler"),
        ("engine.agents.dispatcher", "engine.control"),
    }
    assert cycles(edges | {("engine.schedule.cron", "engine.config.sources")}) == [["config", "schedule"]]
    assert cycles(edges) == []


# ---------------------------------------------------------------- engine/ as it is


def test_every_engine_module_has_a_layer() -> None:
    missing = sorted({unit(m) for m in engine_sources()} - set(LAYERS))
    assert not missing, f"give these a layer in LAYERS (and a docstring saying what they may import): {missing}"


def test_no_module_imports_a_higher_layer() -> None:
    found = violations(imports(engine_sources()))
    assert not found, "imports against the layers:\n" + "\n".join(f"{a} -> {b}" for a, b in sorted(found))


def test_no_import_cycle_between_sub_packages() -> None:
    edges = imports(engine_sources())
    assert cycles(edges) == []
