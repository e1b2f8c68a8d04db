"""Block-wise FP8 (e4m3) dequantisation with DeepSeek's semantics: weight * weight_scale_inv per B0 x B1 block."""

from __future__ import annotations

import math

import torch

# The scale-shape check is torch-free (plan_devices and `r1-plugin models plan` import no torch); it is defined once
# in r1_plugin.models.fp8_blocks and used from here on every load path.
from r1_plugin.models.fp8_blocks import Fp8ScaleError, block_size_of, check_scale_shape

__all__ = [
    "FP8_DTYPES", "Fp8ScaleError", "block_size_of", "check_scale_shape", "dequantize_blockwise", "dequantize_stacked",
    "is_fp8", "quantize_blockwise",
]

FP8_DTYPES = tuple(
    getattr(torch, name) for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2") if hasattr(torch, name)
)


def is_fp8(tensor: torch.Tensor) -> bool:
    """Whether a tensor is stored in one of torch's 8-bit float types."""
    return tensor.dtype in FP8_DTYPES


def dequantize_blockwise(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block_size: tuple[int, int] | list[int] = (128, 128),
    dtype: torch.dtype = torch.float32,
    name: str = "FP8 weight",
) -> torch.Tensor:
    """weight [rows, cols] (fp8) times scale_inv [ceil(rows/B0), ceil(cols/B1)] broadcast over its blocks.

    Block (i, j) covers rows i*B0..(i+1)*B0 and cols j*B1..(j+1)*B1; the last block of a dimension that is not a
    multiple of the block size is partial (R1's kv_a_proj_with_mqa: 576 rows = 4.5 blocks of 128). The product
    is computed in float32 and cast to `dtype`.
    """
    if weight.ndim != 2:
        raise Fp8ScaleError(f"block-wise FP8 weights are 2-D; got shape {tuple(weight.shape)}.")
    b0, b1 = check_scale_shape(name, weight.shape, scale_inv.shape, block_size)
    return dequantize_stacked(weight, scale_inv, (b0, b1), dtype)


def dequantize_stacked(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block_size: tuple[int, int] | list[int],
    dtype: torch.dtype,
    row_block: torch.Tensor | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """weight [..., rows, cols] (fp8) times its block scales [..., n_row_blocks, ceil(cols/B1)]; leading dims batch.

    Row r uses scale row `row_block[r]` (default r // B0; a row subset of a larger matrix, such as W_K_b's rows of
    kv_b_proj, passes the rows' original block indices). The product is taken in float32 and cast to `dtype`,
    the same elementwise operations whatever the batching, so every caller gets bit-identical numbers.

    Two equivalent paths (bit-identical, tested): on the CPU one float32 copy scaled in place; elsewhere (`fused`,
    the default off the CPU) the e4m3 values go to bfloat16 (exact: every float8 value is a bfloat16 value) and one
    mixed-dtype multiply computes each float32 product and stores it cast to `dtype` (7 bytes moved per number for
    a bfloat16 result instead of 19). Torch's CPU mixed-dtype multiply is slower than the two passes, hence the
    split; the GPU gain is by bytes moved, not yet measured (no GPU was available).
    """
    b0, b1 = int(block_size[0]), int(block_size[1])
    rows, cols = weight.shape[-2:]
    scale = scale_inv.to(device=weight.device, dtype=torch.float32)
    if row_block is None:
        row_scale = scale.repeat_interleave(b0, dim=-2)[..., :rows, :]
    else:
        row_scale = scale.index_select(-2, row_block.to(weight.device))
    lead = weight.shape[:-2]
    full = cols - cols % b1
    if fused if fused is not None else weight.device.type != "cpu":
        exact = weight.to(torch.bfloat16)
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        if full:
            blocks = (*lead, rows, full // b1, b1)
            torch.mul(exact[..., :full].view(blocks), row_scale[..., : full // b1, None],
                      out=out[..., :full].view(blocks))
        if full < cols:
            torch.mul(exact[..., full:], row_scale[..., -1:], out=out[..., full:])
        return out
    # In place on one float32 copy, with the scale broadcast over column blocks (no full-size scale grid):
    # peak is one float32 copy of the weight plus the output, not four full-size temporaries.
    out = weight.to(torch.float32, copy=True)  # never scale the caller's (possibly mmap-backed) tensor
    if full:
        out[..., :full].view(*lead, rows, full // b1, b1).mul_(row_scale[..., : full // b1, None])
    if full < cols:
        out[..., full:].mul_(row_scale[..., -1:])
    return out.to(dtype)


def quantize_blockwise(
    weight: torch.Tensor, block_size: tuple[int, int] | list[int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of dequantize_blockwise (for building test checkpoints): e4m3 weight and per-block scale_inv."""
    b0, b1 = int(block_size[0]), int(block_size[1])
    rows, cols = weight.shape
    w = weight.to(torch.float32)
    pad = torch.zeros(math.ceil(rows / b0) * b0, math.ceil(cols / b1) * b1)
    pad[:rows, :cols] = w.abs()
    amax = pad.view(pad.shape[0] // b0, b0, pad.shape[1] // b1, b1).amax(dim=(1, 3))
    scale_inv = (amax / torch.finfo(torch.float8_e4m3fn).max).clamp(min=1e-12)
    full = scale_inv.repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
    return (w / full).to(torch.float8_e4m3fn), scale_inv
