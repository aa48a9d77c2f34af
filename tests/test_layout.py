"""The package's layout, enforced: the core (components, models, estimators) imports nothing of
the run infrastructure, and no module of pyro_vae imports itself through others."""

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyro_vae")
INFRASTRUCTURE = {"data", "train", "distributed", "launch", "runs", "checkpoint", "resources",
                  "files", "evaluation"}
SHARED = {"errors", "__init__"}


def _imports():
    """module -> the pyro_vae modules it imports (at the top or inside a function)."""
    graph = {}
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(PACKAGE, name)).read())
            graph[name[:-3]] = {node.module for node in ast.walk(tree)
                                if isinstance(node, ast.ImportFrom) and node.level == 1
                                and node.module}
    return graph


def test_the_core_imports_no_infrastructure():
    graph = _imports()
    core = set(graph) - INFRASTRUCTURE - SHARED
    assert {"estimators", "ais", "annealing", "program", "protocol", "vae"} <= core
    offenders = {m: graph[m] & INFRASTRUCTURE for m in core if graph[m] & INFRASTRUCTURE}
    assert not offenders


def test_no_import_cycle():
    graph = {m: deps - {"__init__"} for m, deps in _imports().items() if m != "__init__"}

    def visit(module, path):
        for dep in graph.get(module, ()):
            assert dep not in path, f"import cycle: {' -> '.join(path + [dep])}"
            visit(dep, path + [dep])

    for module in graph:
        visit(module, [module])
