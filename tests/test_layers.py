"""The package layers of docs/ARCHITECTURE.md: imports point down only, no module imports itself back (nor,
even for type hints only, does any module or package import one that imports it), and no module calls another
object's private methods."""

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


def _imports(type_hints: bool = False) -> dict[str, set[str]]:
    """Module -> the medlens modules it imports, lazy imports included (and ``type_hints``: those under
    ``if TYPE_CHECKING``)."""
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
        typing_only = set() if type_hints else {id(n) for block in guarded for n in ast.walk(block)}
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


def test_no_two_modules_or_packages_import_each_other_even_for_type_hints() -> None:
    edges = _imports(type_hints=True)
    pairs = sorted((a, b) for a, targets in edges.items() for b in targets if a < b and a in edges.get(b, ()))
    assert not pairs, pairs
    packages: dict[str, set[str]] = defaultdict(set)
    for src, targets in edges.items():
        packages[_package(src)].update(_package(dst) for dst in targets if _package(dst) != _package(src))
    knots = {
        (a, b) for a, targets in packages.items() for b in targets if a < b and a in packages.get(b, set())
    }
    assert not knots, f"packages importing each other: {sorted(knots)}"


def test_no_calls_of_another_objects_private_methods() -> None:
    """``x._name(...)`` is for ``self``, ``cls`` and ``super()`` only: what another module needs is public."""
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, owner = node.func.attr, node.func.value
            if not name.startswith("_") or name.startswith("__"):
                continue
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            calls.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node.func)}")
    assert not calls, calls


def test_no_module_imports_another_modules_private_names() -> None:
    """``from medlens.x import _name`` is a private call in disguise: what another module needs is public."""
    imports = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medlens"):
                imports += [
                    f"{path.relative_to(SRC)}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not imports, imports
