"""Run r1_plugin's tests that need no SAELens under TransformerLens 4 (`make compat-tl4`, docs/compat.md).

SAELens 6.54 pins transformer-lens<4 and cannot be imported under TransformerLens 4, and TransformerLens 4 removed
HookedTransformer. What must work there: `import r1_plugin` (its HookedTransformer patches skipped, never failing)
and every tool on a TransformerBridge. The selection is by marker, so new tests join without editing this script:
every test marked `bridge` or `tl4` in a test file that imports no `sae_lens` (anywhere in the file, by its AST).
A selected file that cannot even be imported under TransformerLens 4 is a collection error, i.e. a failure.

    python scripts/compat_tl4.py                   # select, run, check (run with the TL 4 environment's python)
    python scripts/compat_tl4.py --list            # the selected files
    python scripts/compat_tl4.py --requirements    # what `make compat-tl4` installs (our deps, no SAELens)
    python scripts/compat_tl4.py -- -x -k smoke    # extra pytest arguments after `--`

Exit status 0 only when pytest passed and at least one test passed (a selection that runs nothing fails).
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKERS = ("bridge", "tl4")
MARK_EXPRESSION = " or ".join(MARKERS)
# Left out of the TransformerLens 4 environment: SAELens cannot be imported there; torch is installed first from its
# CPU wheel (the Makefile), so a plain `torch` requirement never pulls CUDA packages.
EXCLUDED_DEPS = ("sae-lens", "torch")
TRANSFORMER_LENS_4 = "transformer-lens>=4,<5"
TEST_DEPS = ("pytest", "pytest-timeout")  # from the dev extra: what the selected tests need


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement string, normalised (`sae_lens>=6` -> `sae-lens`)."""
    for i, char in enumerate(requirement):
        if not (char.isalnum() or char in "-_."):
            requirement = requirement[:i]
            break
    return requirement.strip().lower().replace("_", "-")


def requirements() -> list[str]:
    """pyproject.toml's dependencies without SAELens and torch, TransformerLens 4, and the test runner."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = []
    for requirement in project["dependencies"]:
        name = _name(requirement)
        if name in EXCLUDED_DEPS:
            continue
        out.append(TRANSFORMER_LENS_4 if name == "transformer-lens" else requirement)
    dev = {_name(r): r for r in project["optional-dependencies"]["dev"]}
    return out + [dev[name] for name in TEST_DEPS]


def imports_sae_lens(tree: ast.AST) -> bool:
    """Whether a module's AST imports sae_lens anywhere (module level or inside a function)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sae_lens" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sae_lens":
            return True
    return False


def has_marker(tree: ast.AST) -> bool:
    """Whether a module uses `pytest.mark.bridge` / `pytest.mark.tl4` (as a decorator or in `pytestmark`)."""
    return any(isinstance(node, ast.Attribute) and node.attr in MARKERS and isinstance(node.value, ast.Attribute)
               and node.value.attr == "mark" for node in ast.walk(tree))


def selected_files(tests: Path) -> list[Path]:
    """Test files with a `bridge`/`tl4` marker that import no sae_lens."""
    files = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if has_marker(tree) and not imports_sae_lens(tree):
            files.append(path)
    return files


def counts(junit: Path) -> dict[str, int]:
    """passed / failed / error / skipped counts from a JUnit XML report."""
    result = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        result[{"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"] += 1
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: select, run with pytest, and check that something ran and passed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", action="store_true", help="print what the TL 4 environment installs")
    parser.add_argument("--list", action="store_true", help="print the selected test files")
    args = parser.parse_args(argv)
    if args.requirements:
        print("\n".join(requirements()))
        return 0
    files = selected_files(REPO / "tests")
    if args.list:
        print("\n".join(str(f.relative_to(REPO)) for f in files))
        return 0
    version = metadata.version("transformer-lens")
    if int(version.split(".")[0]) < 4:
        print(f"compat-tl4: this python has transformer-lens {version}; run it with the TransformerLens 4 "
              "environment (`make compat-tl4` builds .venv-tl4)", file=sys.stderr)
        return 2
    if not files:
        print("compat-tl4: no test file has a bridge/tl4 marker without importing sae_lens: nothing to run",
              file=sys.stderr)
        return 1
    print(f"compat-tl4: transformer-lens {version}, {len(files)} files: "
          + ", ".join(f.name for f in files), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "tl4.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        start = time.monotonic()
        code = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", MARK_EXPRESSION,
             f"--junitxml={junit}", *map(str, files), *extra], cwd=REPO, env=env, check=False,
        ).returncode
        seconds = time.monotonic() - start
        found = counts(junit) if junit.is_file() else {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    print(f"compat-tl4: transformer-lens {version}: {found['passed']} passed, {found['failed']} failed, "
          f"{found['error']} errors, {found['skipped']} skipped in {seconds:.0f} s (pytest exit {code})")
    if code == 0 and found["passed"] == 0:
        print("compat-tl4: no test passed (all skipped or deselected): that is a failure", file=sys.stderr)
        return 1
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
