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


# cos/sin tables shared by every layer (and model) with the same frequencies: (inv_freq, factor, device) -> table.
_TABLES: dict[tuple[bytes, float, torch.device], torch.Tensor] = {}
# Positions per table block; each block is computed alone with the same shapes, so a position's cos/sin never
# depends on how far the table has grown (or on which other positions a forward asks for).
TABLE_BLOCK = 1024


class DeepseekRotary:
    """cos/sin for the rope dims, looked up in a table shared across layers (grown on demand, never a buffer, so
    meta-device construction needs no fix-up); one lookup per layer instead of recomputing cos and sin."""

    def __init__(self, cfg: DeepseekV3HookedConfig) -> None:
        dim, base = cfg.qk_rope_head_dim, float(cfg.rotary_base)
        if cfg.use_yarn_rope:
            self.inv_freq = _yarn_inv_freq(cfg, dim, base)
            self.attention_factor = float(cfg.yarn_attention_factor)
        else:
            self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim))
            self.attention_factor = 1.0
        self.interleave = cfg.rope_interleave
        self._key = self.inv_freq.numpy().tobytes()

    def table(self, n_positions: int, device: torch.device) -> torch.Tensor:
        """float32 [>= n_positions, 2, rope_dim/2]: cos and sin of positions 0.. (YaRN's attention factor applied)."""
        key = (self._key, self.attention_factor, device)
        table = _TABLES.get(key)
        have = 0 if table is None else table.shape[0]
        if have >= n_positions:
            return table  # type: ignore[return-value]
        # A normal tensor even when first built under inference_mode: autograd may use it later.
        with torch.inference_mode(False), torch.no_grad():
            inv_freq = self.inv_freq.to(device)
            blocks = [] if table is None else [table]
            for start in range(have, n_positions, TABLE_BLOCK):
                positions = torch.arange(start, start + TABLE_BLOCK, dtype=torch.float32, device=device)
                freqs = positions[:, None] * inv_freq
                blocks.append(torch.stack([freqs.cos(), freqs.sin()], dim=1) * self.attention_factor)
            table = torch.cat(blocks)
        _TABLES[key] = table
        return table

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype, n_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape [*positions.shape, rope_dim/2], scaled by YaRN's attention factor (HF semantics).

        `n_positions` (> every position) spares reading the largest position back from the device.
        """
        if n_positions is None:
            n_positions = int(positions.max()) + 1 if positions.numel() else 0
        pair = self.table(n_positions, positions.device)[positions]  # [*positions.shape, 2, rope_dim/2]
        return pair[..., 0, :].to(dtype), pair[..., 1, :].to(dtype)

    def cos_sin_range(
        self, start: int, stop: int, batch: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cos_sin` of positions start..stop-1 for every row ([batch, stop - start, rope_dim/2]): a view of the
        table, no lookup (the unpadded case)."""
        pair = self.table(stop, device)[start:stop]
        cos, sin = pair[None, :, 0, :].expand(batch, -1, -1), pair[None, :, 1, :].expand(batch, -1, -1)
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

    def rotate_into(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> None:
        """Write rotated x [..., rope_dim] into `out` (any strides; no autograd): the numbers of `apply`."""
        if self.interleave:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        else:
            x1, x2 = x.chunk(2, dim=-1)
        first, second = out.chunk(2, dim=-1)
        torch.sub(x1 * cos, x2 * sin, out=first)
        torch.add(x2 * cos, x1 * sin, out=second)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [..., rope_dim]; interleaved pairs (x0,x1),(x2,x3) or halves, output in half-split order."""
        return torch.cat(self.halves(x, cos, sin), dim=-1)
