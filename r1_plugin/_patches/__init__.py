"""Every patch r1_plugin makes into TransformerLens and SAELens lives in this package, one module per target.

- `tl_models`: TransformerLens's model-name registry, name resolution and HF-config conversion (R1 distills,
  DeepSeek-V3 names, local folders, clear errors).
- `tl_deepseek`: TransformerLens internals the DeepSeek-V3 architecture needs (config class, block factory,
  latent KV cache, streaming from_pretrained).
- `tl_generation`: class-level pass-throughs of HookedTransformer.forward / generate / generate_stream that report
  forward and generation boundaries to an observer attached to one instance (the steering tracker).
- `sae_lens`: SAELens's pretrained-SAE directory and loader registries (Goodfire's R1 SAEs from our yaml).

Each patch is idempotent (guarded by a marker attribute) and says in a comment what it patches and why.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

# Applied in this order; a module missing (e.g. during development) is skipped with a debug log, never silently
# half-applied: each module's apply() is all-or-nothing for its own target.
PATCH_MODULES: tuple[str, ...] = ("tl_models", "tl_deepseek", "tl_generation", "sae_lens")


def apply_all() -> None:
    """Apply every patch (safe to call any number of times)."""
    for name in PATCH_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                logger.debug("patch module %s not present", name)
                continue
            raise
        module.apply()
