"""r1_plugin: DeepSeek-R1 and its distills in TransformerLens and SAELens.

`import r1_plugin` is light: it imports neither torch, TransformerLens nor SAELens. It registers the R1 models
with TransformerLens and Goodfire's R1 SAEs with SAELens when those are imported (at once if they already are),
through `r1_plugin._patches`; `r1_plugin.register()` imports both and applies everything now (idempotent).
The names below load on first use (`_EXPORTS`); `r1_plugin.doctor()` prints what is installed and patched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from r1_plugin import _patches
from r1_plugin._lazy import lazy_exports

if TYPE_CHECKING:  # what the lazy exports are, for type checkers and IDEs
    from r1_plugin.chat import format_r1_prompt as format_r1_prompt
    from r1_plugin.chat import r1_chat_batch as r1_chat_batch
    from r1_plugin.chat import r1_chat_tokens as r1_chat_tokens
    from r1_plugin.diagnostics import doctor as doctor
    from r1_plugin.models.device_plan import plan_devices as plan_devices
    from r1_plugin.models.model_names import ModelSpec as ModelSpec

__version__ = "0.1.0"

# Exported name -> module it lives in; imported on first attribute access (module `__getattr__`, PEP 562).
# Adding an export is one line here.
_EXPORTS: dict[str, str] = {
    "format_r1_prompt": "r1_plugin.chat",
    "r1_chat_tokens": "r1_plugin.chat",
    "r1_chat_batch": "r1_plugin.chat",
    "ModelSpec": "r1_plugin.models.model_names",
    "doctor": "r1_plugin.diagnostics",
    "plan_devices": "r1_plugin.models.device_plan",
}

__all__ = [
    "register", "list_models", "__version__", "format_r1_prompt", "r1_chat_tokens", "r1_chat_batch", "ModelSpec",
    "doctor", "plan_devices",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


def register() -> None:
    """Register r1_plugin's models with TransformerLens and its SAE releases with SAELens now (imports both;
    idempotent)."""
    _patches.apply_all()


def list_models() -> list[ModelSpec]:
    """The models r1_plugin registers: HF id, aliases, architecture and chat family."""
    from r1_plugin.models.model_names import ALL_MODELS

    return list(ALL_MODELS)


_patches.install()
