"""Which model names mean a checkpoint folder on disk, and which folders r1_plugin converts itself.

The rule (docs/models.md): TransformerLens's official names and aliases always mean TransformerLens's model. A
name means a local folder only when it is written as a path (absolute, `./`, `../`, `~`, or containing a path
separator), is not an official name or alias, and the folder holds a config.json. Of those folders, r1_plugin
converts the R1 family itself (DeepseekV3ForCausalLM, and a distill's folder: one named like a distill repo, as
`DeepSeek-R1-Distill-Qwen-7B/` or the HF cache's `models--deepseek-ai--DeepSeek-R1-Distill-Qwen-7B/`); every
other folder gets TransformerLens's own conversion for its architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1_plugin.errors import UnsupportedArchitectureError
from r1_plugin.models.model_names import DISTILLS, ModelSpec

DEEPSEEK_V3_ARCHITECTURE = "DeepseekV3ForCausalLM"


def is_path_like(name: str) -> bool:
    """Whether `name` is written as a filesystem path (absolute, ./, ../, ~, or containing a separator)."""
    separators = [os.sep] + ([os.altsep] if os.altsep else []) + ["/"]
    return (
        os.path.isabs(name)
        or name.startswith(("~", "./", "../", ".\\", "..\\"))
        or any(sep in name for sep in separators)
    )


def is_official_name(name: str) -> bool:
    """Whether TransformerLens (with r1_plugin's names registered) knows `name` as an official name or alias."""
    from transformer_lens import loading_from_pretrained as loading

    return name.lower() in loading.make_model_alias_map()


def local_folder(name: object) -> Path | None:
    """The checkpoint folder `name` means (absolute), or None when it is not a path to a folder with config.json
    or is one of TransformerLens's names."""
    if not isinstance(name, str) or not is_path_like(name):
        return None
    # Absolute (symlinks kept): the result is passed on as the "official name", and must stay a path there.
    folder = Path(os.path.abspath(os.path.expanduser(name)))
    if not (folder / "config.json").is_file() or is_official_name(name):
        return None
    return folder


def folder_architecture(folder: Path) -> str:
    """The first entry of `<folder>/config.json`'s `architectures` ("" when it names none)."""
    config_path = folder / "config.json"
    try:
        archs = json.loads(config_path.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise UnsupportedArchitectureError(
            f"{config_path} is not a readable HF config.json ({exc}); fetch it again, e.g. `hf download <repo> "
            f"config.json --local-dir {folder} --force-download`"
        ) from exc
    return str(archs[0]) if archs else ""


def distill_of_folder(folder: Path) -> ModelSpec | None:
    """The distill whose repo a folder is (a path component named like the repo or its HF-cache folder)."""
    parts = {part.casefold() for part in folder.resolve().parts}
    for spec in DISTILLS:
        repo = spec.hf_id.split("/")[-1].casefold()
        cache_name = "models--" + spec.hf_id.replace("/", "--").casefold()
        if repo in parts or cache_name in parts:
            return spec
    return None


def is_r1_family_folder(folder: Path) -> bool:
    """Whether r1_plugin converts this folder itself: DeepSeek-V3/R1 architecture, or a distill's folder."""
    arch = folder_architecture(folder)
    spec = distill_of_folder(folder)
    return arch == DEEPSEEK_V3_ARCHITECTURE or (spec is not None and arch == spec.architecture)
