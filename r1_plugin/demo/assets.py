"""The embedded tiny R1 assets shipped in `r1_plugin/assets/`, and their installation into the Hugging Face cache.

The demo installs them under their repo ids (`r1-plugin/tiny-r1`, `r1-plugin/tiny-r1-sae`) so that
`HookedTransformer.from_pretrained_no_processing("r1-plugin/tiny-r1")` and `SAE.from_pretrained("tiny-r1-sae", ...)`
load them offline through exactly the code paths used for DeepSeek-R1 and Goodfire's SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
MODEL_DIR = ASSETS_DIR / "tiny-r1"
SAE_DIR = ASSETS_DIR / "tiny-r1-sae"
FEATURES_DIR = ASSETS_DIR / "tiny-r1-features"

MODEL_REPO_ID = "r1-plugin/tiny-r1"
SAE_REPO_ID = "r1-plugin/tiny-r1-sae"
SAE_RELEASE = "tiny-r1-sae"
SAE_LAYER = 2
SAE_ID = f"layer_{SAE_LAYER}"
SAE_HOOK = f"blocks.{SAE_LAYER}.hook_resid_post"
SAE_SUBDIR = "reasoning"  # like Goodfire's `logic/` and `math/` folders
SAE_FILE = f"{SAE_SUBDIR}/tiny-r1-SAE-l{SAE_LAYER}.pt"
REGISTRY_ENTRY_FILE = SAE_DIR / "REGISTRY_ENTRY.yaml"
FEATURES_LABELS = FEATURES_DIR / SAE_SUBDIR / "autointerp.db"
FEATURES_ACTIVATIONS = FEATURES_DIR / SAE_SUBDIR / f"tiny-r1-SAE-l{SAE_LAYER}.ddb"

# Files of each HF repo (paths inside the repo); build bookkeeping such as REGISTRY_ENTRY.yaml is not uploaded.
MODEL_REPO_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "build_info.json",
)
SAE_REPO_FILES: tuple[str, ...] = (SAE_FILE, f"{SAE_SUBDIR}/config.json", f"{SAE_SUBDIR}/build_info.json")


class MissingAssetsError(R1PluginError, FileNotFoundError):
    """The embedded assets are not in the package (a partial checkout or a broken install)."""


@dataclass(frozen=True)
class InstalledAssets:
    """Snapshot folders of the embedded repos in the HF cache."""

    model_snapshot: Path
    sae_snapshot: Path


def _files(folder: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Map repo paths to asset files, failing clearly if any is missing."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise MissingAssetsError(
            f"embedded assets missing under {folder}: {', '.join(missing)}. Reinstall r1-plugin or rebuild them "
            "with `python scripts/make_tiny_r1.py`."
        )
    return {name: folder / name for name in names}


def install_model_repo(cache_dir: str | Path | None = None) -> Path:
    """Write the tiny R1 (config, safetensors, tokenizer) into the HF cache under `r1-plugin/tiny-r1`."""
    from r1_plugin.testing.hub import write_hf_repo

    return write_hf_repo(MODEL_REPO_ID, _files(MODEL_DIR, MODEL_REPO_FILES), cache_dir=cache_dir)


def install_sae_repo(cache_dir: str | Path | None = None) -> Path:
    """Write the tiny R1's SAE (Goodfire's .pt format) into the HF cache under `r1-plugin/tiny-r1-sae`."""
    from r1_plugin.testing.hub import write_hf_repo

    return write_hf_repo(SAE_REPO_ID, _files(SAE_DIR, SAE_REPO_FILES), cache_dir=cache_dir)


def install_embedded_assets(cache_dir: str | Path | None = None) -> InstalledAssets:
    """Write the tiny R1 and its SAE into the HF cache (HF_HUB_CACHE by default) under their repo ids; idempotent."""
    return InstalledAssets(install_model_repo(cache_dir), install_sae_repo(cache_dir))


def registry_entry() -> dict[str, Any]:
    """The embedded SAE's release entry (SAELens's pretrained_saes.yaml schema), from REGISTRY_ENTRY.yaml."""
    import yaml

    if not REGISTRY_ENTRY_FILE.is_file():
        raise MissingAssetsError(f"{REGISTRY_ENTRY_FILE} is missing: rebuild with `scripts/make_tiny_r1.py --stage sae`")
    data = yaml.safe_load(REGISTRY_ENTRY_FILE.read_text())
    if not isinstance(data, dict) or SAE_RELEASE not in data:
        raise MissingAssetsError(f"{REGISTRY_ENTRY_FILE} does not define release {SAE_RELEASE!r}")
    return dict(data[SAE_RELEASE])


def ensure_sae_registered() -> bool:
    """Make `SAE.from_pretrained(SAE_RELEASE, SAE_ID)` work: True if r1_plugin's pretrained_saes.yaml already
    has the release; else add it to SAELens's directory from REGISTRY_ENTRY.yaml (same parser) and return False."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from r1_plugin.saes.registry import _lookup, raw_releases

    if SAE_RELEASE in raw_releases():
        return True
    directory = get_pretrained_saes_directory()
    if SAE_RELEASE not in directory:
        directory[SAE_RELEASE] = _lookup(SAE_RELEASE, registry_entry())
    return False
