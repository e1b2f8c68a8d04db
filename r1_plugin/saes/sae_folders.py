"""SAEs on disk, loaded by path: a folder SAELens saved (cfg.json + weights), or a release folder described by a
`sae.yaml` in SAELens's release schema (`config_overrides`, `saes: [{id, path}]`) whose files are Goodfire-format
`.pt` state dicts, as the embedded demo SAE is. Nothing here touches the hub or the HF cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError

RELEASE_FILE = "sae.yaml"
# What to do about a damaged SAELens folder: there is no download to repeat, only the save.
RESAVE = "save the SAE again (`sae.save_model(folder)`) or copy the folder again from where it came from"


class SAEPathError(R1PluginError, FileNotFoundError):
    """A path that holds no SAE r1_plugin can load (neither a SAELens folder nor a described release folder)."""


def release_entry(folder: Path) -> dict[str, Any]:
    """The one release `folder/sae.yaml` describes (SAELens's release schema)."""
    import yaml

    data = yaml.safe_load((folder / RELEASE_FILE).read_text())
    if not isinstance(data, dict) or len(data) != 1:
        raise SAEPathError(f"{folder / RELEASE_FILE} must describe exactly one release (name: {{config_overrides, "
                           "saes}}), as SAELens's pretrained_saes.yaml does")
    entry = dict(next(iter(data.values())))
    if entry.get("conversion_func") != "goodfire_r1" or not entry.get("saes"):
        raise SAEPathError(f"{folder / RELEASE_FILE}: only `conversion_func: goodfire_r1` releases with `saes` load "
                           "by path; save other SAEs with SAELens (`sae.save_model(folder)`)")
    return entry


def check_sae_path(path: str | Path) -> Path:
    """`path` expanded, if it holds an SAE this module loads (checked before any slow model load); else an error."""
    folder = Path(path).expanduser()
    if not ((folder / "cfg.json").is_file() or (folder / RELEASE_FILE).is_file()):
        raise SAEPathError(
            f"{folder} holds no SAE: expected a folder saved by SAELens (cfg.json) or a release folder with "
            f"{RELEASE_FILE} (e.g. the embedded demo SAE, r1_plugin/assets/tiny-r1-sae)"
        )
    return folder


def load_sae_from_path(path: str | Path, sae_id: str | None = None, device: str = "cpu", dtype: str | None = None,
                       ) -> Any:
    """`SAE.load_from_disk` for a SAELens folder, or for `sae_id` (default: the only one) of a release folder."""
    from sae_lens import SAE

    folder = check_sae_path(path)
    if (folder / "cfg.json").is_file():
        return _load_saelens_folder(folder, device, dtype)
    from r1_plugin.saes.goodfire import disk_converter

    entry = release_entry(folder)
    saes = {str(sae["id"]): sae for sae in entry["saes"]}
    if sae_id is None and len(saes) == 1:
        sae_id = next(iter(saes))
    if sae_id not in saes:
        raise SAEPathError(f"{folder} has SAEs {sorted(saes)}; pass one of them as the SAE id")
    overrides = dict(entry.get("config_overrides") or {})
    return SAE.load_from_disk(folder / saes[sae_id]["path"], device=device, dtype=dtype,
                              converter=disk_converter(overrides))


def _checked_saelens_loader(path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None,
                            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """SAELens's own disk loader, with a damaged cfg.json or weights file, or a non-finite tensor, named."""
    import json

    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
    from safetensors import SafetensorError

    from r1_plugin.saes.goodfire import SAEFileError, check_finite

    folder = Path(path)
    try:
        cfg, state = sae_lens_disk_loader(path, device, cfg_overrides)
    except json.JSONDecodeError as exc:
        raise SAEFileError(f"{folder / SAE_CFG_FILENAME} is not valid JSON (truncated or corrupt: {exc}); {RESAVE}"
                           ) from exc
    except SafetensorError as exc:
        raise SAEFileError(f"{folder / SAE_WEIGHTS_FILENAME} is not a readable safetensors file, likely truncated or "
                           f"corrupt ({exc}); {RESAVE}") from exc
    check_finite(state, str(folder / SAE_WEIGHTS_FILENAME), fix=RESAVE)
    return cfg, state


def _load_saelens_folder(folder: Path, device: str, dtype: str | None) -> Any:
    """`SAE.load_from_disk` of a SAELens folder, with damaged files and tensors that do not fit its cfg.json named."""
    from sae_lens import SAE
    from sae_lens.constants import SAE_WEIGHTS_FILENAME

    from r1_plugin.saes.goodfire import SAEFileError

    if not (folder / SAE_WEIGHTS_FILENAME).is_file():
        raise SAEPathError(f"{folder} has cfg.json but no {SAE_WEIGHTS_FILENAME}: the folder is incomplete; {RESAVE}")
    try:
        return SAE.load_from_disk(str(folder), device=device, dtype=dtype, converter=_checked_saelens_loader)
    except RuntimeError as exc:
        if not str(exc).startswith("Error(s) in loading state_dict"):  # torch's load_state_dict wording
            raise
        detail = " ".join(str(exc).split())
        raise SAEFileError(f"{folder / SAE_WEIGHTS_FILENAME} does not fit its cfg.json ({detail}); {RESAVE}"
                           ) from exc
