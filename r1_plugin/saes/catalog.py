"""The R1 SAEs one can load with `SAE.from_pretrained`: r1_plugin's releases and SAELens's releases for R1's distills.

Nothing is downloaded: everything comes from the registry (r1_plugin's yaml and SAELens's directory). Fields a
release does not state without downloading its config (e.g. k of a JumpReLU SAE) are None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from r1_plugin.models.model_names import ALL_MODELS
from r1_plugin.models.model_names import lookup as lookup_model
from r1_plugin.saes.releases import raw_releases

R1_MODEL = "deepseek-ai/DeepSeek-R1"


@dataclass(frozen=True)
class R1SAEInfo:
    """One SAE: where it loads from, where it attaches, and what it was trained on."""

    release: str
    sae_id: str
    model: str
    repo_id: str
    path: str
    hook_name: str | None
    k: int | None = None
    d_sae: int | None = None
    architecture: str | None = None
    dataset: str | None = None
    trained_on: str | None = None
    source: str = "sae_lens"  # "r1_plugin" (our yaml) or "sae_lens" (SAELens's own yaml)
    links: dict[str, str] = field(default_factory=dict)


def _r1_models() -> set[str]:
    return {R1_MODEL, *(spec.hf_id for spec in ALL_MODELS)}


def _llama_scope_r1_distill(sae_id: str, path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Llama Scope folders are `<training mix>/L<layer>R`; R is the residual stream after the block."""
    match = re.search(r"L(\d+)R$", path)
    mix = path.split("/", 1)[0] if "/" in path else None
    return {
        "hook_name": f"blocks.{match.group(1)}.hook_resid_post" if match else None,
        "architecture": "jumprelu",
        "trained_on": f"Llama Scope training mix {mix}" if mix else None,
    }


def _deepseek_r1_qresearch(sae_id: str, path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """SAELens's `deepseek_r1` config getter needs no download: ask it."""
    from sae_lens.loading.pretrained_sae_loaders import get_deepseek_r1_config_from_hf

    cfg = get_deepseek_r1_config_from_hf("", path, "cpu", cfg_overrides=overrides or None)
    return {"hook_name": cfg["hook_name"], "d_sae": cfg["d_sae"], "architecture": cfg["architecture"],
            "dataset": cfg.get("dataset_path")}


# What each SAELens conversion_func tells about an SAE without a download (by its id/path naming).
_DESCRIBE: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
    "llama_scope_r1_distill": _llama_scope_r1_distill,
    "deepseek_r1": _deepseek_r1_qresearch,
}


# Describers that call SAELens's own code (skipped by `list_r1_saes(light=True)`).
_ASKS_SAE_LENS: frozenset[str] = frozenset({"deepseek_r1"})


def _generic(sae_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    hook = overrides.get("hook_name")
    if hook is None and re.match(r"^blocks\.\d+\.hook_\w+$", sae_id):
        hook = sae_id
    return {"hook_name": hook, "k": overrides.get("k"), "d_sae": overrides.get("d_sae"),
            "architecture": overrides.get("architecture"), "dataset": overrides.get("dataset_path")}


@dataclass(frozen=True)
class _Release:
    """The fields of SAELens's `PretrainedSAELookup` the catalog reads, from a release's yaml entry."""

    model: str
    repo_id: str
    conversion_func: str | None
    saes_map: dict[str, str]
    config_overrides: dict[str, Any] | None


def _release(entry: dict[str, Any]) -> _Release:
    return _Release(entry["model"], entry["repo_id"], entry.get("conversion_func"),
                    {str(s["id"]): str(s["path"]) for s in entry["saes"]}, entry.get("config_overrides"))


def _directory_from_yaml() -> dict[str, Any]:
    """SAELens's directory read from its own pretrained_saes.yaml without importing SAELens, with r1_plugin's
    releases added as `import r1_plugin` adds them (a release SAELens ships is kept)."""
    import importlib.util
    from pathlib import Path

    import yaml

    spec = importlib.util.find_spec("sae_lens")
    data: dict[str, Any] = {}
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    directory: dict[str, Any] = {release: _release(entry) for release, entry in data.items()}
    for release, entry in raw_releases().items():
        directory.setdefault(release, _release(entry))
    return directory


def list_r1_saes(model: str | None = None, light: bool = False) -> list[R1SAEInfo]:
    """Every registered SAE for R1 or one of its distills (optionally only `model`'s), r1_plugin's first.

    `light=True` (what `r1-plugin saes list` uses) reads the registries' yaml files without importing SAELens or
    torch; fields only SAELens's own config getters can tell (e.g. d_sae of the distills' qresearch SAE) stay None.
    """
    if light:
        directory = _directory_from_yaml()
    else:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        directory = get_pretrained_saes_directory()
    ours = raw_releases()
    spec = lookup_model(model) if model else None  # an alias (r1, r1-distill-llama-8b) or any case names its HF id
    wanted = {spec.hf_id if spec is not None else model} if model else _r1_models()
    infos: list[R1SAEInfo] = []
    for release, lookup in directory.items():
        if lookup.model not in wanted:
            continue
        overrides = dict(lookup.config_overrides or {})
        entry = ours.get(release, {})
        mine = bool(entry) and entry.get("repo_id") == lookup.repo_id
        for sae_id, path in lookup.saes_map.items():
            fields_ = _generic(sae_id, overrides)
            describe = _DESCRIBE.get(lookup.conversion_func or "")
            if describe is not None and not mine and not (light and lookup.conversion_func in _ASKS_SAE_LENS):
                fields_.update({k: v for k, v in describe(sae_id, path, overrides).items() if v is not None})
            infos.append(R1SAEInfo(
                release=release, sae_id=sae_id, model=lookup.model, repo_id=lookup.repo_id, path=path,
                trained_on=entry.get("trained_on") if mine else fields_.pop("trained_on", None),
                source="r1_plugin" if mine else "sae_lens",
                links=dict(entry.get("links") or {}) if mine else {},
                **{k: v for k, v in fields_.items() if k != "trained_on"},
            ))
    infos.sort(key=lambda i: (i.source != "r1_plugin", i.model != R1_MODEL, i.release, _natural(i.sae_id)))
    return infos


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
