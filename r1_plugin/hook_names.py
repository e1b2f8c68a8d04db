"""TransformerLens hook names: the one place that reads a layer out of a hook name or an SAE's hook."""

from __future__ import annotations

import re
from typing import Any

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook_name: str) -> int | None:
    """The block index a TransformerLens hook name lives in ("blocks.37.hook_resid_post" -> 37), else None."""
    match = _BLOCK_HOOK.match(hook_name)
    return int(match.group(1)) if match else None


def sae_hook_name_or_none(sae: Any) -> str | None:
    """The hook an SAELens SAE was trained on (SAELens 6 keeps it in `cfg.metadata.hook_name`), if it says."""
    cfg = getattr(sae, "cfg", None)
    meta = getattr(cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) or getattr(cfg, "hook_name", None)
    return str(name) if name else None


def sae_hook_name(sae: Any) -> str:
    """The hook the SAE was trained on; a clear error when the SAE does not say."""
    name = sae_hook_name_or_none(sae)
    if name is None:
        raise ValueError("the SAE does not say which hook it reads (cfg.metadata.hook_name): pass hook_name=")
    return name
