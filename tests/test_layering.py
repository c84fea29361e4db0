"""The layering the design promises: ``loadtests -> engine -> workers``, one way.

* ``workers`` never imports ``engine``: neither statically (no import statement in
  workers/ names engine) nor in fact (importing ``workers`` or any ``workers.*`` module
  in a fresh interpreter leaves no ``engine`` module in ``sys.modules``);
* no import cycle within engine/ or workers/. The graph is built from the source
  (the AST of each file) with every import statement: at module level, inside functions
  (``import engine`` in a function of an engine module is a cycle too: it runs
  ``engine/__init__``) and under ``if TYPE_CHECKING:`` (a dependency for the types is a
  dependency of the design).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.engines import ROOT, engine_env

PACKAGES = ("engine", "workers")


def module_files() -> dict[str, Path]:
    """Every module of engine/ and workers/ by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement brings in (``from X import y`` yields
    ``X.y`` and ``X``: which one is a module is decided by the caller)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolved against this module's package
            package = module.split(".")
            if not is_package:
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            yield f"{base}.{alias.name}"
        yield base


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of engine/ and workers/ it imports, anywhere in its source."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = list(_imported(node, module, is_package))
            if isinstance(node, ast.ImportFrom):
                # ``from X import y``: the module X.y if there is one, else X itself.
                base, members = names[-1], names[:-1]
                found = [name for name in members if name in files]
                if len(found) < len(members) and base in files:
                    found.append(base)
                targets.update(found)
            else:
                targets.update(name for name in names if name in files)
        targets.discard(module)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each
    sorted; every import cycle lies within one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    """The import edges inside one cycle, one per line."""
    members = set(component)
    return "\n".join(
        f"  {source} imports {target}"
        for source in component
        for target in sorted(graph[source] & members)
    )


# --- the tests ---


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    """The graph builder itself: a cycle through an import inside a function, and a
    relative import, are found (a checker that cannot see them cannot fail)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    import engine\nfrom .supervision import x\n")
    names = [name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for name in _imported(node, "engine.master", is_package=False)]
    assert "engine" in names and "engine.supervision" in names


def test_no_import_cycle_in_engine_or_workers() -> None:
    graph = import_graph()
    assert graph["engine"], "the graph found no import in engine/__init__.py"
    found = cycles(graph)
    assert not found, "import cycles (each group imports itself through the others):\n" + (
        "\n".join(f"{' <-> '.join(c)}\n{describe(c, graph)}" for c in found)
    )


def test_workers_source_never_imports_engine() -> None:
    graph = import_graph()
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] == "engine")
        for module, targets in graph.items()
        if module.split(".")[0] == "workers"
    }
    assert not {m: t for m, t in offenders.items() if t}, offenders


@pytest.mark.parametrize(
    "module", sorted(m for m in module_files() if m.split(".")[0] == "workers")
)
def test_importing_workers_loads_no_engine_module(module: str) -> None:
    """In a fresh interpreter, importing *module* leaves no ``engine`` module loaded."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m == 'engine' or m.startswith('engine.'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=engine_env(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"importing {module} loaded engine modules"
