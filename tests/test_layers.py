"""The import rules of DESIGN.md, checked on the source with the AST (lazy imports inside
functions included, `if TYPE_CHECKING:` imports left out: they never run):

- no import cycle between modules of src/cnnlab;
- imports point one way: cli -> api -> tasks -> (engine, budget, recipes, analysis, report) ->
  models -> data -> (runs, checkpoints, dist, progress, errors, faults, config); a module never
  imports a higher layer, and nothing below the API imports the package face `cnnlab`.

A violation that cannot be fixed yet is listed in ALLOWED with the reason; the test fails when an
allowed edge disappears too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"

# Higher number = higher layer. The package face (`import cnnlab`) and the CLI are the two front
# doors over the API (the CLI reads the face's __version__ for --version); `python -m cnnlab`
# runs the CLI. results.py (the API's Result) sits between the API and the tasks (it renders
# with report/).
LAYERS: dict[str, int] = {
    "cnnlab.__main__": 9,
    "cnnlab": 8, "cli": 8,
    "api": 7,
    "results": 6,
    "tasks": 5,
    "engine": 4, "budget": 4, "recipes": 4, "analysis": 4, "report": 4, "batched": 4,
    "step_timing": 4,  # a step's cost for the budget, timed as the engine would run it
    "models": 3,
    "data": 2,
    "runs": 1, "checkpoints": 1, "dist": 1, "progress": 1, "errors": 1, "faults": 1,
    "config": 1,
    # Modules that import nothing else of cnnlab: the machine (device, precision), TensorBoard's
    # copy of metrics.jsonl (runs.py writes it), the worker pool, the RNG states.
    "hardware": 1, "tracking": 1, "workers": 1, "rng": 1,
}

# (importer, imported) module pairs that break a rule today, each with why it stays for now.
# Empty: every edge the scan finds obeys the rules.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = ("cnnlab", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The cnnlab modules `tree` imports, anywhere in the file (module level or in a function);
    `from cnnlab.x import y` counts as importing cnnlab.x.y when that is a module, else cnnlab.x.
    """
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cnnlab")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "cnnlab":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != module}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py",
                        modules)
            for m, p in files.items()}


def layer_of(module: str) -> int:
    if module in LAYERS:
        return LAYERS[module]
    top = module.split(".")[1]
    if top not in LAYERS:
        raise AssertionError(f"{module}: its layer is not in DESIGN.md's order (add it to LAYERS)")
    return LAYERS[top]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets
            if layer_of(b) > layer_of(a)}


def test_scanner_sees_lazy_imports_and_skips_type_checking():
    """The oracle for the scanner itself: a lazy import inside a function is an edge, a
    TYPE_CHECKING import is not, and `from pkg import module` names the module."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from cnnlab.tasks import evaluate\n"
        "def f():\n    from cnnlab.models import registry\n    import cnnlab.data.decode\n"
    )
    modules = {"cnnlab.models", "cnnlab.models.registry", "cnnlab.data.decode",
               "cnnlab.tasks", "cnnlab.tasks.evaluate", "cnnlab.runs"}
    assert _imports(ast.parse(source), "cnnlab.runs", False, modules) == {
        "cnnlab.models.registry", "cnnlab.data.decode"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (lazy imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_imports_a_higher_layer(graph):
    found = upward_edges(graph)
    new = sorted(found - set(ALLOWED))
    assert not new, "imports of a higher layer:\n" + "\n".join(
        f"  {a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, b in new)
    gone = sorted(set(ALLOWED) - found)
    assert not gone, f"fixed, remove from ALLOWED: {gone}"


def test_the_predictor_and_the_cams_sit_below_the_tasks(graph):
    """Issue 28: predict and explain shared each other's pieces; both now import them from
    models/ and analysis/, and no task imports another task for them."""
    assert "cnnlab.tasks.explain" not in graph["cnnlab.tasks.predict"]
    assert "cnnlab.tasks.predict" not in graph["cnnlab.tasks.explain"]
    assert "cnnlab.tasks.explain" not in graph["cnnlab.tasks.evaluate"]
