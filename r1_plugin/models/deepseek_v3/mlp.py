"""Bias-free gated SiLU MLP: DeepSeek-V3's dense layers (below first_k_dense_replace) and its shared experts."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig


class DeepseekV3DenseMLP(nn.Module):
    """down(silu(x @ W_gate) * (x @ W_in)); W_gate/W_in [d_model, d_mlp], W_out [d_mlp, d_model]; TL hook names."""

    def __init__(self, cfg: DeepseekV3HookedConfig, d_mlp: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_mlp = cfg.d_mlp if d_mlp is None else d_mlp
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, self.d_mlp, dtype=cfg.dtype))
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, self.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(self.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp], gate pre-activation
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp], up projection
        self.hook_post = HookPoint()  # [batch, pos, d_mlp], silu(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_model] -> [..., d_model]."""
        gate = self.hook_pre(x @ self.W_gate)
        up = self.hook_pre_linear(x @ self.W_in)
        return self.hook_post(F.silu(gate) * up) @ self.W_out
