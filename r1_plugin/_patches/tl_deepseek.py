"""Patches into TransformerLens 3.9 internals that DeepSeek-V3/R1 needs; the only place r1_plugin's DeepSeek code
touches TransformerLens. Each patch is idempotent (marker attribute), takes and forwards `*args, **kwargs` (reading
the arguments it needs through the original's own signature), and falls through to the original for every other
architecture.
"""

from __future__ import annotations

import functools
from typing import Any

from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components import TransformerBlock
from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

from r1_plugin._patches._hooked import hooked_transformer_module
from r1_plugin._patches._marks import bind, is_patched, mark, replace, require
from r1_plugin.errors import UnsupportedArchitectureError
from r1_plugin.models.deepseek_v3.config import ARCHITECTURE, DeepseekV3HookedConfig

PATCH = "tl_deepseek"


def is_deepseek_cfg(cfg: Any) -> bool:
    """Whether a TL config describes a DeepSeek-V3 model."""
    return isinstance(cfg, DeepseekV3HookedConfig) or getattr(cfg, "original_architecture", None) == ARCHITECTURE


def _patch_config_from_dict() -> None:
    """HookedTransformerConfig.from_dict: `get_pretrained_model_config` ends in `HookedTransformerConfig.from_dict`
    (= cls(**d)), which rejects MLA/MoE keys; build DeepseekV3HookedConfig for DeepseekV3ForCausalLM instead."""
    original = require(HookedTransformerConfig, "from_dict", PATCH).__func__
    if is_patched(original):
        return

    def from_dict(cls: type, *args: Any, **kwargs: Any) -> HookedTransformerConfig:
        config_dict = bind(original, cls, *args, **kwargs)["config_dict"]
        if config_dict.get("original_architecture") == ARCHITECTURE and not issubclass(cls, DeepseekV3HookedConfig):
            return DeepseekV3HookedConfig(**config_dict)
        return original(cls, *args, **kwargs)

    functools.update_wrapper(from_dict, original)
    replace(HookedTransformerConfig, "from_dict", classmethod(mark(from_dict, original)))


class _BlockFactory(TransformerBlock):
    """Stands in for `TransformerBlock` inside transformer_lens.HookedTransformer: `HookedTransformer.__init__`
    builds `TransformerBlock(cfg, i)`, which hard-codes TL attention and one MLP kind for all layers. For a
    DeepSeek-V3 config `__new__` returns a DeepseekV3Block, otherwise a stock TransformerBlock (both are
    TransformerBlock instances, and neither is a _BlockFactory, so Python does not call __init__ twice)."""

    _r1_plugin_deepseek_patched = True

    def __new__(cls, cfg: Any, block_index: int, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        from r1_plugin.models.deepseek_v3.block import DeepseekV3Block

        unwrapped = HookedTransformerConfig.unwrap(cfg)
        if is_deepseek_cfg(unwrapped):
            return DeepseekV3Block(unwrapped, block_index)
        return TransformerBlock(cfg, block_index, *args, **kwargs)


def _patch_block_factory() -> None:
    """transformer_lens.HookedTransformer.TransformerBlock (module global read by __init__) -> _BlockFactory."""
    if is_patched(require(hooked_transformer_module, "TransformerBlock", PATCH)):
        return
    replace(hooked_transformer_module, "TransformerBlock", _BlockFactory)


def _patch_init_cache() -> None:
    """TransformerLensKeyValueCache.init_cache (what `generate(use_past_kv_cache=True)` calls): for DeepSeek-V3
    build the latent cache (kv_lora_rank + qk_rope_head_dim per token per layer) instead of per-head K/V."""
    original = require(TransformerLensKeyValueCache, "init_cache", PATCH).__func__
    if is_patched(original):
        return

    def init_cache(cls: type, *args: Any, **kwargs: Any) -> Any:
        arguments = bind(original, cls, *args, **kwargs)
        if is_deepseek_cfg(arguments["cfg"]):
            from r1_plugin.models.deepseek_v3.kv_cache import DeepseekLatentKVCache

            return DeepseekLatentKVCache.init_cache(arguments["cfg"], arguments["device"], arguments["batch_size"])
        return original(cls, *args, **kwargs)

    functools.update_wrapper(init_cache, original)
    replace(TransformerLensKeyValueCache, "init_cache", classmethod(mark(init_cache, original)))


def _patch_get_pos_offset() -> None:
    """HookedTransformer.get_pos_offset asserts the cache holds [batch, pos, n_heads, d_head] keys; a latent cache
    holds [batch, pos, kv_lora_rank + rope]: take the cached length from it instead."""
    original = require(hooked_transformer_module.HookedTransformer, "get_pos_offset", PATCH)
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_pos_offset(self: Any, *args: Any, **kwargs: Any) -> int:
        from r1_plugin.models.deepseek_v3.kv_cache import DeepseekLatentKVCache

        arguments = bind(original, self, *args, **kwargs)
        past_kv_cache, batch_size = arguments["past_kv_cache"], arguments["batch_size"]
        if isinstance(past_kv_cache, DeepseekLatentKVCache):
            cached_batch = past_kv_cache.entries[0].past_latent.shape[0]
            if cached_batch != batch_size:
                raise ValueError(f"KV cache was built for batch {cached_batch}, got batch {batch_size}.")
            return past_kv_cache.length
        return original(self, *args, **kwargs)

    replace(hooked_transformer_module.HookedTransformer, "get_pos_offset", mark(get_pos_offset, original))


def _patch_from_pretrained() -> None:
    """HookedTransformer.from_pretrained: TL's path loads AutoModelForCausalLM into CPU RAM (1.3 TB for R1) and
    refuses FP8. For DeepSeek-V3 names/folders stream the safetensors shards instead; the model is still built by
    `cls(cfg, tokenizer, ...)`, so subclasses (SAELens's HookedSAETransformer) get their own class."""
    ht = hooked_transformer_module.HookedTransformer
    original = require(ht, "from_pretrained", PATCH).__func__
    if is_patched(original):
        return

    def from_pretrained(cls: type, model_name: str, *args: Any, **kwargs: Any) -> Any:
        from r1_plugin.models.deepseek_v3.loading import deepseek_official_name, load_pretrained

        official = deepseek_official_name(model_name)
        if official is None:
            # keep_fp8 / memory_per_device are r1_plugin's DeepSeek-V3 loader options; TransformerLens would pass
            # them on to transformers. keep_fp8=False asks for nothing: drop it; anything else is a clear error.
            if kwargs.pop("keep_fp8", False) or "memory_per_device" in kwargs:
                raise UnsupportedArchitectureError(
                    f"keep_fp8/memory_per_device apply to DeepSeek-V3/R1 checkpoints (block-quantised FP8 weights, "
                    f"r1_plugin's streaming loader); {model_name!r} loads through TransformerLens's own path. "
                    "Drop those arguments for it."
                )
            return original(cls, model_name, *args, **kwargs)
        return load_pretrained(cls, model_name, official, *args, **kwargs)

    functools.update_wrapper(from_pretrained, original)
    replace(ht, "from_pretrained", classmethod(mark(from_pretrained, original)))


def _patch_load_and_process_state_dict() -> None:
    """HookedTransformer.load_and_process_state_dict (what `process_weights_` calls): TL's weight processing
    assumes W_Q/W_K/W_V/W_in; for DeepSeek-V3 it replaced the norms by RMSNormPre without folding their weights
    anywhere (silently wrong logits). Use the loader's exact folds instead; refuse the refactoring."""
    ht = hooked_transformer_module.HookedTransformer
    original = require(ht, "load_and_process_state_dict", PATCH)
    if is_patched(original):
        return

    @functools.wraps(original)
    def load_and_process_state_dict(self: Any, *args: Any, **kwargs: Any) -> None:
        if not is_deepseek_cfg(self.cfg):
            return original(self, *args, **kwargs)
        from r1_plugin.models.deepseek_v3.loading import load_and_process_into

        a = bind(original, self, *args, **kwargs)
        load_and_process_into(self, a["state_dict"], a["fold_ln"], a["center_unembed"],
                              a["refactor_factored_attn_matrices"])
        return None

    replace(ht, "load_and_process_state_dict", mark(load_and_process_state_dict, original))


def _patch_device_placement() -> None:
    """transformer_lens's `get_device_for_block_index`, as bound in HookedTransformer (its forward moves the residual
    to each block's device) and in the TL KV cache, and `HookedTransformer.move_model_modules_to_device` (which TL
    3.9 sends wholesale to one device): TL splits blocks by count; a DeepSeek-V3 config carrying a byte-balanced
    `device_plan` (r1_plugin.models.device_plan) uses that plan instead. Every other config falls through."""
    from transformer_lens.cache import key_value_cache

    from r1_plugin.models.device_plan import block_device

    ht = hooked_transformer_module.HookedTransformer
    for module in (hooked_transformer_module, key_value_cache):
        original = require(module, "get_device_for_block_index", PATCH)
        if is_patched(original):
            continue

        def get_device_for_block_index(index: int, cfg: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if is_deepseek_cfg(cfg) and getattr(cfg, "device_plan", None):
                return block_device(index, cfg, *args, **kwargs)
            return _original(index, cfg, *args, **kwargs)

        functools.update_wrapper(get_device_for_block_index, original)
        replace(module, "get_device_for_block_index", mark(get_device_for_block_index, original))

    original_move = require(ht, "move_model_modules_to_device", PATCH)
    if is_patched(original_move):
        return

    @functools.wraps(original_move)
    def move_model_modules_to_device(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not (is_deepseek_cfg(self.cfg) and getattr(self.cfg, "device_plan", None)):
            return original_move(self, *args, **kwargs)
        first, last = block_device(0, self.cfg), block_device(self.cfg.n_layers - 1, self.cfg)
        self.embed.to(first)
        self.hook_embed.to(first)
        if hasattr(self, "ln_final"):
            self.ln_final.to(last)
        self.unembed.to(last)
        for i, block in enumerate(self.blocks):
            block.to(block_device(i, self.cfg))
        return None

    replace(ht, "move_model_modules_to_device", mark(move_model_modules_to_device, original_move))


def apply() -> None:
    """Apply every DeepSeek-V3 patch (idempotent)."""
    _patch_config_from_dict()
    _patch_block_factory()
    _patch_init_cache()
    _patch_get_pos_offset()
    _patch_from_pretrained()
    _patch_load_and_process_state_dict()
    _patch_device_placement()
