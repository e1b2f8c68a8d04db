"""r1_plugin: DeepSeek-R1 and its distills in TransformerLens and SAELens.

`import r1_plugin` registers the models with TransformerLens and Goodfire's R1 SAEs with SAELens
(idempotent; `r1_plugin.register()` does it again explicitly, e.g. after SAELens's directory cache was cleared).
"""

from __future__ import annotations

from r1_plugin.chat import format_r1_prompt, r1_chat_tokens
from r1_plugin.models.placement import plan_devices
from r1_plugin.models.registry import ALL_MODELS, ModelSpec

__version__ = "0.1.0"

__all__ = [
    "register", "list_models", "format_r1_prompt", "r1_chat_tokens", "ModelSpec", "plan_devices", "__version__"
]


def register() -> None:
    """Register r1_plugin's models with TransformerLens and its SAE releases with SAELens (idempotent)."""
    from r1_plugin._patches import apply_all

    apply_all()


def list_models() -> list[ModelSpec]:
    """The models r1_plugin registers: HF id, aliases, architecture and chat family."""
    return list(ALL_MODELS)


register()
