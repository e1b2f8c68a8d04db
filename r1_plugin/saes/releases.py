"""r1_plugin's SAE releases: read from its `pretrained_saes.yaml` (SAELens's schema) into SAELens's lookup objects.

One mechanism for every release: the yaml is found with `importlib.resources` inside the installed package
(the wheel force-includes it as `r1_plugin/pretrained_saes.yaml`), else at the repository's top level (editable
install). Adding a release is a yaml edit; `reload()` re-reads the file.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from r1_plugin.errors import R1PluginError

YAML_NAME = "pretrained_saes.yaml"


class SAERegistryError(R1PluginError, ValueError):
    """r1_plugin's pretrained_saes.yaml is missing or not in SAELens's schema."""


def yaml_path() -> Path:
    """Where r1_plugin's pretrained_saes.yaml is: inside the installed package, else the repo's top level."""
    packaged = files("r1_plugin").joinpath(YAML_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    repo_top = Path(__file__).resolve().parents[2] / YAML_NAME
    if repo_top.is_file():
        return repo_top
    raise SAERegistryError(
        f"r1_plugin's {YAML_NAME} was found neither in the installed package ({packaged}) nor at the "
        f"repository's top level ({repo_top}); reinstall r1-plugin (`pip install -e .` in a clone)."
    )


@functools.cache
def raw_releases() -> dict[str, dict[str, Any]]:
    """The yaml's releases as plain dicts (release name -> entry), validated against SAELens's schema."""
    path = yaml_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SAERegistryError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SAERegistryError(f"{path} must map release names to entries, got {type(data).__name__}")
    for release, entry in data.items():
        if not isinstance(entry, dict):
            raise SAERegistryError(f"{path}: release {release!r} must be a mapping")
        missing = [key for key in ("repo_id", "model", "saes") if key not in entry]
        if missing:
            raise SAERegistryError(f"{path}: release {release!r} lacks {', '.join(missing)}")
        for sae in entry["saes"]:
            if not isinstance(sae, dict) or "id" not in sae or "path" not in sae:
                raise SAERegistryError(f"{path}: every SAE of release {release!r} needs `id` and `path`")
    return data


def _lookup(release: str, entry: dict[str, Any]) -> Any:
    """One release as SAELens's `PretrainedSAELookup`, field by field as SAELens parses its own yaml."""
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

    saes_map: dict[str, str] = {}
    var_explained: dict[str, float] = {}
    l0: dict[str, float] = {}
    neuronpedia: dict[str, str] = {}
    norm_scaling: dict[str, float] = {}
    for sae in entry["saes"]:
        sae_id = sae["id"]
        saes_map[sae_id] = str(sae["path"])
        var_explained[sae_id] = sae.get("variance_explained", 1.00)
        l0[sae_id] = sae.get("l0", 0.00)
        neuronpedia[sae_id] = sae.get("neuronpedia")
        if "norm_scaling_factor" in sae:
            norm_scaling[sae_id] = sae["norm_scaling_factor"]
    return PretrainedSAELookup(
        release=release,
        repo_id=entry["repo_id"],
        model=entry["model"],
        conversion_func=entry.get("conversion_func"),
        saes_map=saes_map,
        expected_var_explained=var_explained,
        expected_l0=l0,
        neuronpedia_id=neuronpedia,
        norm_scaling_factor=norm_scaling,
        config_overrides=entry.get("config_overrides"),
    )


@functools.cache
def plugin_lookups() -> dict[str, Any]:
    """r1_plugin's releases as SAELens lookups (release name -> lookup); parsed once, see `reload()`."""
    return {release: _lookup(release, entry) for release, entry in raw_releases().items()}


def reload() -> None:
    """Forget the parsed yaml so the next lookup re-reads it (e.g. after editing it in a live session)."""
    raw_releases.cache_clear()
    plugin_lookups.cache_clear()
