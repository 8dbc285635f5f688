"""The package's layering (docs/architecture.md) read from the code's own imports: no module
imports a layer above its own or one it is not allowed to, and the module-level imports have no
cycle. Function-level (lazy) imports are held to the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "distrec"

# Each layer and the layers it may import (besides itself). The entry points at the top
# (distrec/train.py, export.py, retrieve.py, search.py) may import any layer; no layer imports them.
ALLOWED = {
    "config": set(),
    "data": {"config"},
    "distributed": {"config"},
    "nn": {"config", "data"},
    "eval": {"config", "data", "distributed", "nn"},
    "serve": {"config", "data", "nn"},  # no training code: no TorchRec tables, process groups, tasks or loop
    "tasks": {"config", "data", "distributed", "nn", "eval", "serve"},
    "run": {"config", "data", "distributed", "nn", "eval", "serve", "tasks"},
    "experiments": {"config"},  # runs are child processes of distrec.train
}
ENTRY = {"train", "export", "retrieve", "search", "__init__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported distrec module, at module level) for every import in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distrec"):
            names = [node.module] if node.module != "distrec" else [f"distrec.{a.name}" for a in node.names]
            if node.module != "distrec":
                # `from distrec.serve import retrieve` imports the module distrec.serve.retrieve
                names += [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            found += [(n, id(node) in top) for n in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("distrec")]
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "entry"
    return parts[1] if parts[1] in ALLOWED else "entry"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    stray = [m for m in MODULES if _layer(m) == "entry" and m.split(".")[-1] not in ENTRY and m != "distrec"]
    assert not stray, f"modules outside every layer: {stray}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module):
    here = _layer(module)
    for target, _ in _imports(MODULES[module]):
        there = _layer(target)
        if here == "entry":
            continue
        assert there != "entry", f"{module} imports the entry point {target}"
        assert there == here or there in ALLOWED[here], (
            f"{module} ({here}) imports {target} ({there}); {here} may import {sorted(ALLOWED[here]) or 'nothing'}")


def test_module_level_imports_have_no_cycle():
    graph = {m: {t for t, top in _imports(p) if top and t in MODULES and t != m} for m, p in MODULES.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of the package's design.
    graph = {m: {t for t in ts if not (m == t.rpartition(".")[0] and MODULES[m].name == "__init__.py")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t] if t in path else [m, t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_check_catches_a_layer_violation(tmp_path, monkeypatch):
    # The test above can fail: a serving module that imports the training loop is caught.
    bad = tmp_path / "bad.py"
    bad.write_text("from distrec.run import checkpoint\nfrom distrec.tasks.workload import Workload\n")
    targets = [_layer(t) for t, _ in _imports(bad)]
    assert "run" in targets and "tasks" in targets
    assert not ({"run", "tasks"} & ALLOWED["serve"])


def layer_graph() -> dict[str, dict[str, int]]:
    """layer -> {imported layer: number of import statements}, every import counted."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        here = _layer(module)
        for target, _ in _imports(path):
            there = _layer(target)
            if there != here:
                graph.setdefault(here, {}).setdefault(there, 0)
                graph[here][there] += 1
    return graph


if __name__ == "__main__":  # python -m tests.unit.test_layers: the layer graph, as the closing notes quote it
    for layer, targets in sorted(layer_graph().items()):
        print(f"{layer:12} -> " + ", ".join(f"{t} ({n})" for t, n in sorted(targets.items())))
