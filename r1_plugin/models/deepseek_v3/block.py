"""DeepSeek-V3 decoder block with TransformerLens's hook names (pre-norm MLA, then dense MLP or MoE)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformer_lens.components import RMSNorm, RMSNormPre, TransformerBlock
from transformer_lens.hook_points import HookPoint

from r1_plugin.models.deepseek_v3.attention import DeepseekV3Attention
from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.kv_cache import LatentKVCacheEntry
from r1_plugin.models.deepseek_v3.mlp import DeepseekV3DenseMLP
from r1_plugin.models.deepseek_v3.moe import DeepseekV3MoE


def residual_norm(cfg: DeepseekV3HookedConfig) -> nn.Module:
    """ln1/ln2: RMSNorm, or RMSNormPre once fold_ln has moved its weight into the reading matrices."""
    if cfg.normalization_type == "RMS":
        return RMSNorm(cfg)
    if cfg.normalization_type == "RMSPre":
        return RMSNormPre(cfg)
    raise ValueError(f"DeepSeek-V3 uses RMSNorm; normalization_type={cfg.normalization_type!r} is not supported.")


class DeepseekV3Block(TransformerBlock):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    Subclasses TransformerBlock so `isinstance(block, TransformerBlock)` holds, but builds its own modules.
    """

    def __init__(self, cfg: DeepseekV3HookedConfig, block_index: int) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self.block_index = block_index
        self.normalization_type = cfg.normalization_type
        self.ln1 = residual_norm(cfg)
        self.attn = DeepseekV3Attention(cfg, block_index)
        self.ln2 = residual_norm(cfg)
        self.is_moe = cfg.is_moe_layer(block_index)
        self.mlp: Any = DeepseekV3MoE(cfg) if self.is_moe else DeepseekV3DenseMLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], only with cfg.use_hook_mlp_in
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid_pre: torch.Tensor,
        shortformer_pos_embed: torch.Tensor | None = None,
        past_kv_cache_entry: LatentKVCacheEntry | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block; signature as TransformerBlock.forward (shortformer_pos_embed is unused: MLA is rotary)."""
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(
            self.attn(self.ln1(resid_pre), past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)
        )
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
