"""DeepSeek-V3 / R1 (MLA + DeepSeek MoE, FP8 checkpoints) as a TransformerLens HookedTransformer.

The config names load on first use, so the TransformerLens-independent submodules (`fp8`, `fp8_weights`) import
under TransformerLens 4 too, where HookedTransformer's config is gone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARCHITECTURE", "DeepseekV3HookedConfig", "hf_to_tl_config_dict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from r1_plugin.models.deepseek_v3 import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
