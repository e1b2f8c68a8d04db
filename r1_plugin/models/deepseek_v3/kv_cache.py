"""Latent KV cache for MLA: kv_lora_rank + qk_rope_head_dim numbers per token per layer, not per-head K and V."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache


@dataclass
class LatentKVCacheEntry:
    """One layer's cache: the normalised KV latent concatenated with the rotated shared rope key."""

    past_latent: torch.Tensor  # [batch, pos_so_far, kv_lora_rank + qk_rope_head_dim]
    frozen: bool = False
    # Rotated per-head K [batch, pos_so_far, head, qk_head_dim] and V [batch, pos_so_far, head, v_head_dim], kept
    # only once a hook has edited hook_k/hook_rot_k/hook_v under this cache (the latent cannot hold such an edit).
    edited_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def init_cache_entry(cls, cfg: Any, device: torch.device | str | None, batch_size: int = 1) -> LatentKVCacheEntry:
        """An empty entry in the model's dtype on `device`."""
        width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        return cls(past_latent=torch.empty((batch_size, 0, width), device=device, dtype=cfg.dtype))

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.past_latent.shape[1]

    @property
    def past_keys(self) -> torch.Tensor:
        """The latent viewed as [batch, pos_so_far, 1, width], so `entry.past_keys.shape[1]` is the cached length."""
        return self.past_latent[:, :, None, :]

    def append(self, new_latent: torch.Tensor) -> torch.Tensor:
        """Return cached + new latents [batch, pos, width]; store them unless frozen."""
        updated = torch.cat([self.past_latent, new_latent.to(self.past_latent.dtype)], dim=1)
        if not self.frozen:
            self.past_latent = updated
        return updated

    def nbytes(self) -> int:
        """Bytes held by this entry (the latent, plus per-head K/V if a hook edit made the entry keep them)."""
        tensors = [self.past_latent, *(self.edited_kv or ())]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class DeepseekLatentKVCache(TransformerLensKeyValueCache):
    """TransformerLensKeyValueCache whose entries hold MLA latents (what `generate` builds for DeepSeek-V3)."""

    @classmethod
    def init_cache(
        cls, cfg: Any, device: torch.device | str | None, batch_size: int = 1
    ) -> DeepseekLatentKVCache:
        """One latent entry per layer, on the device of that layer's block (cfg.device_plan's, or TL's split)."""
        from r1_plugin.models.device_plan import block_device

        entries = [
            LatentKVCacheEntry.init_cache_entry(cfg, block_device(i, cfg, device), batch_size)
            for i in range(cfg.n_layers)
        ]
        mask = torch.empty((batch_size, 0), device=device, dtype=torch.int)
        return cls(entries=entries, previous_attention_mask=mask)  # type: ignore[arg-type]

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self.entries[0].length

    def nbytes(self) -> int:
        """Bytes held by all layers' latents."""
        return sum(entry.nbytes() for entry in self.entries)

    @staticmethod
    def bytes_per_token(cfg: Any) -> int:
        """Bytes one token costs across all layers: n_layers * (kv_lora_rank + qk_rope_head_dim) * itemsize."""
        return cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.dtype.itemsize

    @staticmethod
    def full_kv_bytes_per_token(cfg: Any) -> int:
        """What a per-head K/V cache would cost per token: n_layers * heads * (qk_head_dim + v_head_dim) * itemsize."""
        per_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim
        return cfg.n_layers * cfg.n_heads * per_head * cfg.dtype.itemsize
