"""scripts/compat_tl4.py (`make compat-tl4`): which tests it selects, what it installs, and that an empty run fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def compat_tl4() -> ModuleType:
    """The script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("compat_tl4", REPO / "scripts" / "compat_tl4.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_selection_is_marked_files_that_import_no_sae_lens(tmp_path: Path) -> None:
    """A file with a bridge/tl4 marker (module-level or decorator) is selected unless it imports sae_lens anywhere,
    also inside a function or as `from sae_lens.x import`; a file without the marker is not."""
    files = {
        "test_a.py": "import pytest\npytestmark = pytest.mark.bridge\n",
        "test_b.py": "import pytest\n@pytest.mark.tl4\ndef test_x():\n    pass\n",
        "test_c.py": "import pytest\npytestmark = pytest.mark.bridge\ndef test_x():\n    import sae_lens\n",
        "test_d.py": "import pytest\npytestmark = [pytest.mark.bridge]\nfrom sae_lens.saes import SAE\n",
        "test_e.py": "import pytest\n# pytest.mark.bridge in a comment does not count\ndef test_x():\n    pass\n",
        "test_f.py": "import pytest\npytestmark = pytest.mark.slow\n",
        "helper.py": "import pytest\npytestmark = pytest.mark.bridge\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert [p.name for p in compat_tl4().selected_files(tmp_path)] == ["test_a.py", "test_b.py"]


def test_the_repository_selection_and_requirements() -> None:
    """Today's selection holds the TL4-safe tests and none that import SAELens; the environment gets
    transformer-lens>=4,<5 and pytest, and neither SAELens nor a plain torch requirement."""
    module = compat_tl4()
    names = [p.name for p in module.selected_files(REPO / "tests")]
    assert {"test_bridge_tl4_smoke.py", "test_import_tl4.py"} <= set(names)
    assert "test_patch_layer.py" not in names and "test_isolation.py" not in names
    requirements = module.requirements()
    distributions = [module._name(r) for r in requirements]
    assert "transformer-lens>=4,<5" in requirements and "pytest" in distributions
    assert "sae-lens" not in distributions and "torch" not in distributions
    assert len(distributions) == len(set(distributions))


def test_a_run_under_transformer_lens_3_is_refused(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with a TransformerLens 3 python, the script says to use the TL 4 environment (exit 2), running nothing."""
    module = compat_tl4()
    monkeypatch.setattr(module.metadata, "version", lambda dist: "3.9.0")
    assert module.main([]) == 2
    assert ".venv-tl4" in capsys.readouterr().err
