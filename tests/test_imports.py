"""The package's import graph: no import circle, and the numerical core knows nothing above it.

Every ``import`` statement counts, including those inside functions: an import moved into a function to
break a circle at load time still ties the two modules together. The graph is read from the source with
``ast``, so nothing is imported to build it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "neuralode"

# What the solvers may import from the rest of the package: nothing. The models, datasets, training and
# the command line are built on the solvers, never the other way round.
ABOVE_SOLVERS = (
    "neuralode.models",
    "neuralode.datasets",
    "neuralode.training",
    "neuralode.cli",
    "neuralode.plotting",
    "neuralode._atomic",
)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from .x import name`` counts as importing ``.x.name`` when
    that is a module, else ``.x``)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": {"e"}, "f": set()}
    assert sorted(map(sorted, circles(graph))) == [["a", "b", "c"], ["e", "e2"]]


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "neuralode.solvers" in graph["neuralode"]  # from .solvers import (...) in the package's __init__
    assert "neuralode.solvers.api" in graph["neuralode.solvers"]  # from .api import ...
    assert "neuralode.training.checkpoints" in graph["neuralode.cli.runs"]  # only inside functions


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {[sorted(circle) for circle in found]}"


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_loop_and_the_fast_paths_know_nothing_of_each_other():
    """The api chooses between the joint loop and the fast paths (``solvers/fast/``) and passes records of
    ``solution.py`` between them; neither reaches the other through any chain of imports."""
    graph = import_graph()
    loop, fast = "neuralode.solvers.loop", "neuralode.solvers.fast"
    fast_paths = [name for name in graph if name == fast or name.startswith(fast + ".")]
    assert {f"{fast}.fixed_grid", f"{fast}.compiled_chunks", f"{fast}.grid_run"} <= set(fast_paths)
    assert not sorted(d for d in reach(graph, loop) if d in fast_paths), "loop.py reaches a fast path"
    for name in fast_paths:
        assert loop not in reach(graph, name), f"{name} reaches loop.py"


def test_the_solvers_import_nothing_above_them():
    for name, deps in import_graph().items():
        if name.startswith("neuralode.solvers"):
            above = sorted(d for d in deps if d.startswith(ABOVE_SOLVERS))
            assert not above, f"{name} imports {above}"


# The layers inside solvers/, lowest first: what a layer may reach through any chain of imports. The methods
# (the Method protocol, the families, their steppers and coefficient records) and step-size control know nothing
# of the drivers above them (the loops, the fast paths, events, adjoints, the api); events nothing of the drivers.
SOLVERS = "neuralode.solvers"
DRIVERS = tuple(f"{SOLVERS}.{m}" for m in ("loop", "per_sample", "fast", "adjoint", "api"))
LAYERS = {
    f"{SOLVERS}.methods": DRIVERS + (f"{SOLVERS}.events",),
    f"{SOLVERS}.control": DRIVERS + (f"{SOLVERS}.events",),
    f"{SOLVERS}.events": DRIVERS,
}


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_methods_and_control_know_nothing_of_the_drivers_above_them():
    graph = import_graph()
    for layer, forbidden in LAYERS.items():
        members = [name for name in graph if _inside(name, layer)]
        assert members, f"no module under {layer}"
        for name in members:
            bad = sorted(d for d in reach(graph, name) if any(_inside(d, f) for f in forbidden))
            assert not bad, f"{name} reaches {bad}"
