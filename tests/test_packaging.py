"""The wheel ships what a non-editable install needs: the SAE registry yaml and the embedded demo assets."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (path,) = out.glob("r1_plugin-*.whl")
    return path


def test_wheel_contains_registry_yaml_and_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "r1_plugin/pretrained_saes.yaml" in names
        assert zf.read("r1_plugin/pretrained_saes.yaml") == (ROOT / "pretrained_saes.yaml").read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "r1-plugin = r1_plugin.cli:main" in zf.read(entry_points).decode()
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_non_editable_install_finds_the_yaml(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import r1_plugin, r1_plugin.saes.releases as r; "
        "from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory as g; "
        "print(r1_plugin.__file__); print(r.yaml_path()); print('goodfire-deepseek-r1-math' in g())"
    )
    env = {"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    module_file, yaml_file, registered = done.stdout.split()
    assert module_file.startswith(str(target)) and yaml_file.startswith(str(target))
    assert registered == "True"
