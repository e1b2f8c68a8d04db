"""Multi-head Latent Attention (MLA) of DeepSeek-V2/V3 as a TransformerLens component, every step hooked."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.components import RMSNorm
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_offset_position_ids

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.kv_cache import LatentKVCacheEntry
from r1_plugin.models.deepseek_v3.rope import DeepseekRotary

# transformers' DeepseekV3RMSNorm default: the q/kv latent norms do not use rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def latent_norm(cfg: DeepseekV3HookedConfig, length: int) -> RMSNorm:
    """RMSNorm over a latent (q_lora_rank or kv_lora_rank wide) with HF's fixed eps of 1e-6."""
    norm = RMSNorm(cfg, length=length)
    norm.eps = LATENT_NORM_EPS
    return norm


class DeepseekV3Attention(nn.Module):
    """MLA: q (optionally through a LoRA latent), a compressed KV latent plus one shared rope key per token.

    Weights use TransformerLens orientation (input dim before output dim, heads first):
    W_Q_a [d_model, q_lora_rank], W_Q_b [head, q_lora_rank, qk_head_dim] (or W_Q [head, d_model, qk_head_dim]),
    W_KV_a [d_model, kv_lora_rank + qk_rope_head_dim], W_K_b [head, kv_lora_rank, qk_nope_head_dim],
    W_V_b [head, kv_lora_rank, v_head_dim], W_O [head, v_head_dim, d_model].
    """

    def __init__(self, cfg: DeepseekV3HookedConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        h, d, dtype = cfg.n_heads, cfg.d_model, cfg.dtype
        r, rope = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        if cfg.q_lora_rank is not None:
            self.W_Q_a = nn.Parameter(torch.empty(d, cfg.q_lora_rank, dtype=dtype))
            if cfg.attention_bias:
                self.b_Q_a = nn.Parameter(torch.zeros(cfg.q_lora_rank, dtype=dtype))
            self.q_a_norm = latent_norm(cfg, cfg.q_lora_rank)
            self.W_Q_b = nn.Parameter(torch.empty(h, cfg.q_lora_rank, cfg.qk_head_dim, dtype=dtype))
            self.hook_q_latent = HookPoint()  # [batch, pos, q_lora_rank], after q_a_norm
        else:
            self.W_Q = nn.Parameter(torch.empty(h, d, cfg.qk_head_dim, dtype=dtype))
        self.W_KV_a = nn.Parameter(torch.empty(d, r + rope, dtype=dtype))
        if cfg.attention_bias:
            self.b_KV_a = nn.Parameter(torch.zeros(r + rope, dtype=dtype))
            self.b_O = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.kv_a_norm = latent_norm(cfg, r)
        self.W_K_b = nn.Parameter(torch.empty(h, r, cfg.qk_nope_head_dim, dtype=dtype))
        self.W_V_b = nn.Parameter(torch.empty(h, r, cfg.v_head_dim, dtype=dtype))
        self.W_O = nn.Parameter(torch.empty(h, cfg.v_head_dim, d, dtype=dtype))
        self.rotary = DeepseekRotary(cfg)

        self.hook_kv_latent = HookPoint()  # [batch, pos, kv_lora_rank], after kv_a_norm: what the cache stores
        self.hook_k_rope = HookPoint()  # [batch, pos, qk_rope_head_dim], shared rope key after rotation
        self.hook_q = HookPoint()  # [batch, pos, head, qk_head_dim], before rotary
        self.hook_rot_q = HookPoint()  # [batch, pos, head, qk_head_dim], after rotary
        self.hook_k = HookPoint()  # [batch, kv_pos, head, qk_head_dim], rope part rotated; all cached positions
        self.hook_v = HookPoint()  # [batch, kv_pos, head, v_head_dim]
        self.hook_attn_scores = HookPoint()  # [batch, head, pos, kv_pos], scaled and masked
        self.hook_pattern = HookPoint()  # [batch, head, pos, kv_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, v_head_dim]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], fires only with cfg.use_attn_result

    def positions(
        self, batch: int, n_new: int, past: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Absolute positions of the new tokens: cached length onwards, shifted past left padding like TL."""
        if attention_mask is None:
            return torch.arange(past, past + n_new, device=device)[None].expand(batch, -1)
        return get_offset_position_ids(past, attention_mask).to(device)

    def forward(
        self,
        x: torch.Tensor,
        past_kv_cache_entry: LatentKVCacheEntry | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [batch, pos, d_model] (already ln1-normalised) -> attention output [batch, pos, d_model]."""
        cfg = self.cfg
        batch, n_new, _ = x.shape
        nope, rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim

        if cfg.q_lora_rank is not None:
            q_latent = x @ self.W_Q_a
            if cfg.attention_bias:
                q_latent = q_latent + self.b_Q_a
            q_latent = self.hook_q_latent(self.q_a_norm(q_latent))
            q = torch.einsum("bpr,hrd->bphd", q_latent, self.W_Q_b)
        else:
            q = torch.einsum("bpm,hmd->bphd", x, self.W_Q)
        q = self.hook_q(q)

        compressed = x @ self.W_KV_a
        if cfg.attention_bias:
            compressed = compressed + self.b_KV_a
        kv_latent, k_rope = compressed.split([cfg.kv_lora_rank, rope], dim=-1)
        kv_latent = self.hook_kv_latent(self.kv_a_norm(kv_latent))

        if past_kv_cache_entry is not None and not isinstance(past_kv_cache_entry, LatentKVCacheEntry):
            raise TypeError(
                "DeepSeek-V3 attention caches its compressed latent: build the cache with "
                "TransformerLensKeyValueCache.init_cache(model.cfg, device, batch) after `import r1_plugin`, "
                f"not a per-head cache ({type(past_kv_cache_entry).__name__})."
            )
        past = 0 if past_kv_cache_entry is None else past_kv_cache_entry.length
        pos = self.positions(batch, n_new, past, attention_mask, x.device)
        cos, sin = self.rotary.cos_sin(pos, q.dtype)  # [batch, pos, rope/2]
        q_nope, q_rope = q.split([nope, rope], dim=-1)
        q = self.hook_rot_q(torch.cat([q_nope, self.rotary.apply(q_rope, cos[:, :, None], sin[:, :, None])], -1))
        k_rope = self.hook_k_rope(self.rotary.apply(k_rope, cos, sin))

        if past_kv_cache_entry is not None:
            latent = past_kv_cache_entry.append(torch.cat([kv_latent, k_rope], dim=-1))
            kv_latent, k_rope = latent.split([cfg.kv_lora_rank, rope], dim=-1)

        k_nope = torch.einsum("bkr,hrd->bkhd", kv_latent, self.W_K_b)
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(-1, -1, cfg.n_heads, -1)], dim=-1)
        k = self.hook_k(k)
        v = self.hook_v(torch.einsum("bkr,hrd->bkhd", kv_latent, self.W_V_b))

        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * cfg.softmax_scale
        scores = self.hook_attn_scores(self.apply_causal_mask(scores, past, attention_mask))
        pattern = F.softmax(scores, dim=-1, dtype=torch.float32)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern).to(v.dtype)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))

        if cfg.use_attn_result:
            out = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O)).sum(dim=2)
        else:
            out = z.reshape(batch, n_new, -1) @ self.W_O.reshape(-1, cfg.d_model)
        if cfg.attention_bias:
            out = out + self.b_O
        return out

    @staticmethod
    def apply_causal_mask(
        scores: torch.Tensor, past: int, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """-inf where a query would see a later key or a padding key (TL's convention)."""
        n_q, n_k = scores.shape[-2:]
        if past + n_q != n_k:
            raise ValueError(f"{n_q} new queries + {past} cached positions != {n_k} keys; the cache is inconsistent.")
        q_pos = torch.arange(past, past + n_q, device=scores.device)
        keep = torch.arange(n_k, device=scores.device)[None, :] <= q_pos[:, None]
        keep = keep[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask.to(scores.device).bool()[:, None, None, :]
        return scores.masked_fill(~keep, float("-inf"))
