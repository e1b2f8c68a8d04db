"""The embedded tiny R1 assets shipped in `r1_plugin/assets/`, loaded by path from the installed package.

The model loads as `HookedTransformer.from_pretrained(<its folder>)` through r1_plugin's local-folder path (the
same DeepSeek-V3 code path as R1), the SAE with SAELens's `SAE.load_from_disk` and r1_plugin's Goodfire-format
converter. Neither is registered under a Hugging Face id, so no name can resolve to a download of someone else's
repo, and nothing here touches the hub or the HF cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
MODEL_DIR = ASSETS_DIR / "tiny-r1"
SAE_DIR = ASSETS_DIR / "tiny-r1-sae"
FEATURES_DIR = ASSETS_DIR / "tiny-r1-features"

MODEL_NAME = "tiny-r1"  # a display name only: the model loads by MODEL_DIR
SAE_NAME = "tiny-r1-sae"  # a display name only: the SAE loads by SAE_DIR / SAE_FILE
SAE_LAYER = 2
SAE_ID = f"layer_{SAE_LAYER}"
SAE_HOOK = f"blocks.{SAE_LAYER}.hook_resid_post"
SAE_SUBDIR = "reasoning"  # like Goodfire's `logic/` and `math/` folders
SAE_FILE = f"{SAE_SUBDIR}/tiny-r1-SAE-l{SAE_LAYER}.pt"
SAE_ENTRY_FILE = SAE_DIR / "sae.yaml"
FEATURES_LABELS = FEATURES_DIR / SAE_SUBDIR / "autointerp.db"
FEATURES_ACTIVATIONS = FEATURES_DIR / SAE_SUBDIR / f"tiny-r1-SAE-l{SAE_LAYER}.ddb"

# Files of each asset folder (build bookkeeping such as sae.yaml is listed separately).
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "build_info.json",
)
SAE_FILES: tuple[str, ...] = (SAE_FILE, f"{SAE_SUBDIR}/config.json", f"{SAE_SUBDIR}/build_info.json")


class MissingAssetsError(R1PluginError, FileNotFoundError):
    """The embedded assets are not in the package (a partial checkout or a broken install)."""


def check_files(folder: Path, names: tuple[str, ...]) -> None:
    """Fail clearly if any of the asset files is missing."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise MissingAssetsError(
            f"embedded assets missing under {folder}: {', '.join(missing)}. Reinstall r1-plugin or rebuild them "
            "with `python scripts/make_tiny_r1.py`."
        )


def is_embedded_model(name: str | Path) -> bool:
    """Whether `name` is the embedded tiny R1's folder."""
    try:
        return Path(name).expanduser().resolve() == MODEL_DIR.resolve()
    except OSError:
        return False


def sae_entry() -> dict[str, Any]:
    """The embedded SAE's description (SAELens's release schema: config_overrides, saes[id, path]) from sae.yaml."""
    from r1_plugin.saes.sae_folders import release_entry

    if not SAE_ENTRY_FILE.is_file():
        raise MissingAssetsError(f"{SAE_ENTRY_FILE} is missing: rebuild with `scripts/make_tiny_r1.py --stage sae`")
    return release_entry(SAE_DIR)


def load_model(**kwargs: Any) -> Any:
    """The tiny R1 as `HookedTransformer.from_pretrained_no_processing(<packaged folder>, **kwargs)`."""
    import warnings

    from transformer_lens import HookedTransformer

    check_files(MODEL_DIR, MODEL_FILES)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return HookedTransformer.from_pretrained_no_processing(str(MODEL_DIR), **kwargs)


def load_sae(device: str = "cpu", dtype: str | None = None) -> Any:
    """The tiny R1's SAE by path (`r1_plugin.saes.sae_folders.load_sae_from_path(SAE_DIR)`: SAE.load_from_disk of the
    packaged .pt with the Goodfire converter)."""
    from r1_plugin.saes.sae_folders import load_sae_from_path

    check_files(SAE_DIR, SAE_FILES)
    return load_sae_from_path(SAE_DIR, SAE_ID, device=device, dtype=dtype)
