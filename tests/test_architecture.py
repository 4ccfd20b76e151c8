"""The layout's rules, read from the source: no import cycles (function-level imports included),
Ray imported only by the study wiring, the cluster code and the one worker adapter, and bench
code that imports no tests. See docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "trainables", "search_spaces")
# Where `import ray` may appear (docs/architecture.md).
RAY_ALLOWED = (
    "tuner.study.",
    "tuner.cluster.connect",
    "tuner.cluster.config",
    "trainables.ray_worker",
    "trainables.tune_trial",
    "tuner.branch.run",  # the branch study's Tune experiment and searcher
    "tuner.branch.trial",  # its trials
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every imported name (module, or module.attribute for `from m import a`) with its line,
    wherever the import statement stands: module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (and their parent packages)."""
    modules = source_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported, _ in imports_of(path):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                target = ".".join(parts[:end])
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_even_inside_functions():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_ray_is_imported_only_at_the_edges():
    offenders = [
        f"{name}:{line} imports {imported}"
        for name, path in source_modules().items()
        for imported, line in imports_of(path)
        if imported.split(".")[0] == "ray" and not name.startswith(RAY_ALLOWED)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "package",
    ["tuner.analysis", "tuner.report", "tuner.store", "tuner.branch.plan", "tuner.branch.write"],
)
def test_analysis_report_and_storage_never_reach_ray_through_the_project(package):
    """Not even indirectly: nothing they import (transitively) imports Ray."""
    graph, modules = import_graph(), source_modules()
    ray_direct = {
        name
        for name, path in modules.items()
        if any(i.split(".")[0] == "ray" for i, _ in imports_of(path))
    }
    start = [m for m in graph if m == package or m.startswith(package + ".")]
    seen, todo = set(start), list(start)
    while todo:
        for successor in graph[todo.pop()]:
            if successor not in seen:
                seen.add(successor)
                todo.append(successor)
    assert seen & ray_direct == set()


def test_importing_the_analysis_or_the_public_types_loads_no_ray():
    """At run time too: `tuner.run_study` (which reaches Ray) is loaded only when asked for."""
    import subprocess
    import sys

    code = (
        "import sys, tuner, tuner.analysis.frontier, tuner.report.write; "
        "from tuner import Workload, Metric; assert 'ray' not in sys.modules, 'ray loaded'; "
        "from tuner import run_study; assert callable(run_study)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bench_imports_no_tests():
    offenders = [
        f"{path.name}:{line} imports {imported}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        for imported, line in imports_of(path)
        if imported.split(".")[0] == "tests"
    ]
    assert offenders == []


def test_every_package_says_what_it_holds():
    for name, path in source_modules().items():
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name} has no module docstring"
