"""No function in r1_plugin is over 80 lines unless the line above its `def` says why (`# Long: <reason>`).

A function's length runs from its `def` line to the last line of its body (signature and docstring included);
methods and nested functions count on their own. The comment goes on the line right above the `def`, or above
its first decorator.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "r1_plugin"
MAX_LINES = 80
MARK = "# Long:"


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, def line, lines) of every function in `source` over `limit` lines without a `# Long:`
    reason on the line above it (or above its first decorator)."""
    lines = source.splitlines()
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                above = lines[first - 2].strip() if first >= 2 else ""
                reason = above[len(MARK) :].strip() if above.startswith(MARK) else ""
                if length > limit and not reason:
                    found.append((prefix + child.name, child.lineno, length))
            is_scope = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            visit(child, f"{prefix}{child.name}." if is_scope else prefix)

    visit(ast.parse(source), "")
    return found


def _body(n: int) -> str:
    return "".join(f"    x{i} = {i}\n" for i in range(n))


def test_the_counter_measures_def_to_end_of_body() -> None:
    """A function of exactly 80 lines passes, 81 fails; methods, nested and async functions count; a `# Long:`
    line above the def or its decorator excuses one, an empty reason does not."""
    src = (
        "def ok():\n" + _body(79)
        + "def too_long():\n" + _body(80)
        + "# Long: a table of cases, one per line\ndef excused():\n" + _body(90)
        + "# Long:\ndef empty_reason():\n" + _body(90)
        + "# Long: decorated\n@staticmethod\ndef decorated():\n" + _body(90)
        + "class C:\n    async def method(self):\n" + textwrap.indent(_body(85), "    ")
        + "def outer():\n    def inner():\n" + textwrap.indent(_body(81), "    ") + "    return inner\n"
    )
    found = long_functions(src)
    assert [(name, length) for name, _, length in found] == [
        ("too_long", 81),
        ("empty_reason", 91),
        ("C.method", 86),
        ("outer", 84),
        ("outer.inner", 82),
    ]
    assert found[0][1] == src.splitlines().index("def too_long():") + 1


def test_no_function_over_80_lines_without_a_reason() -> None:
    """Every r1_plugin function is at most 80 lines, or says on the line above why it is longer."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for name, line, length in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        f"functions over {MAX_LINES} lines: split them along their seams, or put a one-line "
        f"'{MARK} <why>' right above the def:\n" + "\n".join(offenders)
    )
