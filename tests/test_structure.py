"""The package's structure: no import cycles between its modules (every import, found with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "r1_plugin"


def module_name(path: Path) -> str:
    """`r1_plugin/a/b.py` -> `r1_plugin.a.b`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement: at module level, inside a function (a lazy import still couples the two modules),
    or under `if TYPE_CHECKING:` (the type checker follows it)."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the r1_plugin modules it imports (`from pkg import sub` counts sub if it is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                # importing a.b.c runs a and a.b first: count the deepest module that exists
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components with more than one module are import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between modules; a package importing its own submodules (re-exports) is not one."""
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        # A package's __init__ re-exporting a submodule that imports the package's siblings is normal Python
        # layering only when removing the package->submodule edges breaks the cycle.
        pruned = {m: {d for d in graph[m] if not d.startswith(m + ".")} for m in component}
        inner = {m: {d for d in pruned[m] if d in component} for m in component}
        if any(len(c) > 1 for c in strongly_connected_components(inner)):
            cycles.append(component)
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    """The detector itself: a -> b -> c -> a is one component, d alone is not a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    """No two r1_plugin modules import each other, directly or through others (lazy and type-checking imports included)."""
    assert _cycles(import_graph()) == []


def test_lazy_exports_match_all_and_resolve() -> None:
    """Each lazily exporting package lists the same names in `__all__` and `_EXPORTS`, and every one resolves."""
    import importlib

    for package in ("r1_plugin", "r1_plugin.features", "r1_plugin.saes"):
        module = importlib.import_module(package)
        exported = set(module._EXPORTS)
        assert exported <= set(module.__all__), package
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
