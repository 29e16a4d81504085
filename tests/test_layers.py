"""The package layers of docs/ARCHITECTURE.md: imports point down only, and no module imports itself back."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medlens"
# Lower number = lower layer; a package may import its own layer or lower ones only.
LAYERS = {
    "errors": 0, "spec": 0, "jsonable": 0, "home": 0, "folders": 0, "__init__": 0, "drawing": 1, "data": 1,
    "config": 2, "models": 3, "inference": 4, "evaluation": 5, "training": 6, "pipelines": 6, "app": 7,
    "cli": 8, "__main__": 9,
}  # fmt: skip


def _imports() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("medlens", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        guarded = [
            b for b in ast.walk(tree) if isinstance(b, ast.If) and "TYPE_CHECKING" in ast.unparse(b.test)
        ]
        typing_only = {id(n) for block in guarded for n in ast.walk(block)}  # type hints, not dependencies
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medlens"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in modules and t != name)
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down_the_layers() -> None:
    upward = []
    for src, targets in _imports().items():
        for dst in targets:
            a, b = _package(src), _package(dst)
            if LAYERS[b] > LAYERS[a]:
                upward.append(f"{src} -> {dst}")
    assert not upward, upward


def test_no_import_cycles() -> None:
    edges = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
