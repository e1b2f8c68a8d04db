"""The package's structure (docs/architecture.md): no import cycles between its modules, no upward imports, and
every folder imports only the layers below it. Every import counts, found with ast: statements at module level,
inside functions and under TYPE_CHECKING, and the dynamic ones (`importlib.import_module`, lazy `_EXPORTS`)."""

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


def _dynamic_imports(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> list[str]:
    """The modules a module imports by name at run time: `importlib.import_module("r1_plugin.x")`, every string
    constant naming an r1_plugin module (lazy-export tables such as `_EXPORTS`, lists of patch modules), and
    `import_module(f"{__name__}.{x}")`, which may import any submodule of the package."""
    package = name if is_package else name.rpartition(".")[0]
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules]
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(call.func, "id", "")) == "import_module":
            arg = call.args[0] if call.args else None
            if isinstance(arg, ast.JoinedStr) and ast.unparse(arg).startswith("f'{__name__}."):
                found += [m for m in modules if m.rpartition(".")[0] == package]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the r1_plugin modules it imports (`from pkg import sub` counts sub if it is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps.update(d for d in _dynamic_imports(tree, name, is_package, set(modules)) if d != name)
        for node in _imports(tree):
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


# The folders (and top-level modules) of r1_plugin, lowest first: each imports only from its own layer or below
# (docs/architecture.md). Importing a parent package to reach a submodule is Python's own layering, not an edge.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "values", "_lazy", "hook_names", "token_text"}),
    frozenset({"response_prefix", "chat", "tracking", "models"}),
    frozenset({"saes"}),
    frozenset({"_patches", "testing"}),
    frozenset({"drive", "diagnostics", "training"}),
    frozenset({"steering", "sinks", "features"}),
    frozenset({"experiments"}),
    frozenset({"cli", "demo"}),
    frozenset({"r1_plugin"}),
)


def _unit(module: str) -> str:
    """`r1_plugin.steering.gates` -> `steering`; the root package is `r1_plugin`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_every_folder_has_a_layer() -> None:
    """A new folder or top-level module gets a place in LAYERS (and a paragraph in docs/architecture.md)."""
    units = {_unit(m) for m in import_graph()}
    assert units == set().union(*LAYERS), units ^ set().union(*LAYERS)


def test_no_import_reaches_a_higher_layer() -> None:
    """Every import (dynamic ones included) goes to the importer's own layer or below."""
    bad = [
        f"{module} -> {dep}"
        for module, deps in import_graph().items()
        for dep in deps
        if not module.startswith(dep + ".") and _layer(_unit(dep)) > _layer(_unit(module))
    ]
    assert bad == []


def test_no_upward_imports() -> None:
    """No module takes a name from a package above it (`from r1_plugin import x` inside r1_plugin.cli): only
    submodules may be reached through an ancestor, so a package's `__init__` never feeds its own children."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    bad = []
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level and name.startswith(node.module + "."):
                bad += [f"{name}: from {node.module} import {a.name}" for a in node.names
                        if f"{node.module}.{a.name}" not in modules]
            if isinstance(node, ast.Import):
                bad += [f"{name}: import {a.name}" for a in node.names if name.startswith(a.name + ".")]
    assert bad == []


def test_dynamic_imports_are_followed() -> None:
    """The structure checks see imports made by name: a lazy export, a patch module list, `import_module`."""
    graph = import_graph()
    assert "r1_plugin.models.device_plan" in graph["r1_plugin"]  # r1_plugin._EXPORTS["plan_devices"]
    assert "r1_plugin.cli.steer" in graph["r1_plugin.cli"]  # import_module(f"{__name__}.{name}")
    assert "r1_plugin._patches.tl_models" in graph["r1_plugin._patches"]
