"""models/ and saes/ no longer share module names; each old path still imports for one release, with a warning."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "r1_plugin.models.registry": ("r1_plugin.models.model_names", "ALL_MODELS"),
    "r1_plugin.models.placement": ("r1_plugin.models.device_plan", "plan_devices"),
    "r1_plugin.models.local": ("r1_plugin.models.local_folders", "local_folder"),
    "r1_plugin.saes.registry": ("r1_plugin.saes.releases", "raw_releases"),
    "r1_plugin.saes.placement": ("r1_plugin.saes.sae_devices", "encode_on_sae"),
    "r1_plugin.saes.local": ("r1_plugin.saes.sae_folders", "load_sae_from_path"),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_path_warns_and_forwards(old: str) -> None:
    new, name = MOVED[old]
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        shim = importlib.import_module(old)
    moved = importlib.import_module(new)
    assert getattr(shim, name) is getattr(moved, name)
    with pytest.raises(AttributeError):
        shim.no_such_name  # noqa: B018


def test_no_module_name_is_shared_between_models_and_saes() -> None:
    """Apart from the deprecated shims, models/ and saes/ have no module of the same name."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "r1_plugin"
    shims = {old.rpartition(".")[2] for old in MOVED}
    models = {p.stem for p in (root / "models").glob("*.py")} - shims - {"__init__"}
    saes = {p.stem for p in (root / "saes").glob("*.py")} - shims - {"__init__"}
    assert not models & saes, models & saes
