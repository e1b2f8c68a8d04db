"""Rotary embeddings for MLA's decoupled rope dims: plain RoPE or YaRN, in half-split or interleaved layout."""

from __future__ import annotations

import math

import torch

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig


def _yarn_inv_freq(cfg: DeepseekV3HookedConfig, dim: int, base: float) -> torch.Tensor:
    """YaRN inverse frequencies: interpolated below the beta_slow band, extrapolated above beta_fast, ramp between."""

    def correction_dim(num_rotations: float) -> float:
        original = cfg.yarn_original_max_position_embeddings
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(cfg.yarn_beta_fast), correction_dim(cfg.yarn_beta_slow)
    if cfg.yarn_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (cfg.yarn_factor * pos_freqs)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    return interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight


class DeepseekRotary:
    """Computes cos/sin for the rope dims on the fly (no buffers, so meta-device construction needs no fix-up)."""

    def __init__(self, cfg: DeepseekV3HookedConfig) -> None:
        dim, base = cfg.qk_rope_head_dim, float(cfg.rotary_base)
        if cfg.use_yarn_rope:
            self.inv_freq = _yarn_inv_freq(cfg, dim, base)
            self.attention_factor = float(cfg.yarn_attention_factor)
        else:
            self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
            self.attention_factor = 1.0
        self.interleave = cfg.rope_interleave
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape [*positions.shape, rope_dim/2], scaled by YaRN's attention factor (HF semantics)."""
        inv_freq = self._on_device.get(positions.device)
        if inv_freq is None:
            inv_freq = self._on_device.setdefault(positions.device, self.inv_freq.to(positions.device))
        freqs = positions[..., None].float() * inv_freq
        cos, sin = freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)

    def halves(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of rotated x [..., rope_dim] (half-split order), for a caller to concatenate once."""
        if self.interleave:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        else:
            x1, x2 = x.chunk(2, dim=-1)
        return x1 * cos - x2 * sin, x2 * cos + x1 * sin

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [..., rope_dim]; interleaved pairs (x0,x1),(x2,x3) or halves, output in half-split order."""
        return torch.cat(self.halves(x, cos, sin), dim=-1)
