"""`r1_plugin.doctor()` / `r1-plugin doctor`: what is installed, what r1_plugin patched, and where things go.

Light by default: it imports neither torch, TransformerLens nor SAELens (a patch whose target is not imported yet
shows as pending, one whose target is not installed as skipped; devices come from the environment).
`doctor(apply=True)` / `r1-plugin doctor --apply` imports them, applies every patch and asks torch for the devices.
Each patch shows as applied, skipped (its target is gone: under TransformerLens 4 the HookedTransformer patches)
or failed (with the error).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Any

PACKAGES: tuple[str, ...] = (
    "r1-plugin", "torch", "transformer-lens", "sae-lens", "transformers", "huggingface-hub", "wandb",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _model_names() -> list[str]:
    """R1 names as TransformerLens's registry has them once `tl_models` applied, else r1_plugin's registry (the HF
    ids, which TransformerBridge.boot_transformers takes directly)."""
    from r1_plugin import _patches
    from r1_plugin.models.model_names import ALL_MODELS

    ours = [spec.hf_id for spec in ALL_MODELS]
    supported = sys.modules.get("transformer_lens.supported_models")
    if supported is None or _patches.patch_status().get("tl_models") != "applied":
        return ours
    return [name for name in supported.OFFICIAL_MODEL_NAMES if name in set(ours)]


def _sae_releases() -> list[str]:
    """r1_plugin's releases as SAELens's directory has them when SAELens is imported, else from our yaml."""
    from r1_plugin.saes.releases import raw_releases

    ours = list(raw_releases())
    directory = sys.modules.get("sae_lens.loading.pretrained_saes_directory")
    if directory is None:
        return ours
    return [name for name in directory.get_pretrained_saes_directory() if name in set(ours)]


def _devices() -> dict[str, Any]:
    """Accelerators torch sees when torch is imported, else what the environment restricts them to."""
    info: dict[str, Any] = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    torch = sys.modules.get("torch")
    if torch is None:
        info["torch"] = "not imported (run `r1-plugin doctor --apply` to ask torch)"
        return info
    info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return info


def _hub() -> dict[str, Any]:
    from huggingface_hub import constants

    from r1_plugin.errors import hub_offline

    return {"cache": constants.HF_HUB_CACHE, "offline": hub_offline() or bool(constants.HF_HUB_OFFLINE)}


def _wandb() -> dict[str, Any]:
    return {"WANDB_MODE": os.environ.get("WANDB_MODE") or "(unset: r1_plugin picks offline without a login)",
            "WANDB_DIR": os.environ.get("WANDB_DIR") or "(unset)"}


def report(apply: bool = False) -> dict[str, Any]:
    """Everything `doctor` prints, as a dict (versions, patches, names, releases, hub, devices, W&B)."""
    from r1_plugin import _patches
    from r1_plugin._patches import _versions

    if apply:
        _patches.apply_all(raise_errors=False)  # a failed patch is warned about and reported in "patches"
        import torch  # noqa: F401  (so the devices come from torch)
    return {
        "python": sys.version.split()[0],
        "versions": {dist: _version(dist) for dist in PACKAGES},
        "tested": {dist: _versions.tested_text(dist) for dist in _versions.TESTED_VERSIONS},
        "untested": _versions.untested_versions(),
        "patches": _patches.patch_status(),
        "models": _model_names(),
        "sae_releases": _sae_releases(),
        "hub": _hub(),
        "devices": _devices(),
        "wandb": _wandb(),
    }


def format_report(info: dict[str, Any]) -> str:
    """The report as the lines `doctor` prints."""
    lines = [f"python {info['python']}", "versions:"]
    for dist, version in info["versions"].items():
        tested = info["tested"].get(dist)
        flag = "  UNTESTED" if dist in info["untested"] else ""
        lines.append(f"  {dist:18s} {version or 'not installed'}" + (f"  (tested {tested}){flag}" if tested else ""))
    lines.append("patches:")
    width = max(map(len, info["patches"]), default=0)
    lines += [f"  {name:{width}s} {status}" for name, status in info["patches"].items()]
    lines.append(f"models ({len(info['models'])}): " + ", ".join(info["models"]))
    lines.append(f"SAE releases ({len(info['sae_releases'])}): " + ", ".join(info["sae_releases"]))
    lines.append(f"HF cache: {info['hub']['cache']}  offline: {info['hub']['offline']}")
    devices = info["devices"]
    lines.append("devices: " + ", ".join(f"{k}={v}" for k, v in devices.items()))
    lines.append("W&B: " + ", ".join(f"{k}={v}" for k, v in info["wandb"].items()))
    return "\n".join(lines)


def doctor(apply: bool = False) -> dict[str, Any]:
    """Print versions, each patch and whether it applied, the registered R1 model names and SAE releases, the
    HF cache and offline state, the visible devices and the W&B mode; returns the same as a dict.
    `apply=True` first imports TransformerLens and SAELens and applies every patch."""
    info = report(apply)
    print(format_report(info))
    return info
