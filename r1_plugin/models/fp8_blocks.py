"""Block-wise FP8 scale shapes, checked before any dequantisation: torch-free, so `plan_devices` and the CLI's
`models plan` use the same block-size check without importing torch (r1_plugin.models.deepseek_v3.fp8 re-exports
these for the load paths)."""

from __future__ import annotations

import math
from typing import Any

from r1_plugin.errors import R1PluginError


class Fp8ScaleError(R1PluginError, ValueError):
    """An FP8 weight's weight_scale_inv (or the config's weight_block_size) does not fit the weight."""


def block_size_of(block_size: Any, where: str = "quantization_config.weight_block_size") -> tuple[int, int]:
    """(B0, B1) from a config's weight_block_size, refusing anything but two positive integers (no division by 0)."""
    ok = isinstance(block_size, (list, tuple)) and len(block_size) == 2
    ok = ok and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block_size)
    if not ok:
        raise Fp8ScaleError(
            f"{where} is {block_size!r}; block-wise FP8 needs two positive integers such as [128, 128] (DeepSeek's "
            "release). Fix config.json's quantization_config, or download the checkpoint's config.json again."
        )
    return int(block_size[0]), int(block_size[1])


def check_scale_shape(
    name: str,
    weight_shape: tuple[int, ...] | Any,
    scale_shape: tuple[int, ...] | Any,
    block_size: Any,
    shard: str | None = None,
    scale_rows: int | None = None,
) -> tuple[int, int]:
    """Refuse a weight_scale_inv whose shape is not [..., ceil(rows/B0), ceil(cols/B1)] for its FP8 weight.

    The one check every FP8 load path makes (HookedTransformer and TransformerBridge, keep_fp8 True and False),
    before any dequantisation: a scale quantised with another block size, or with an extra row or column, would
    otherwise broadcast or index into wrong numbers without an error. `scale_rows` replaces the row count when the
    weight is a row subset of a larger matrix (W_K_b / W_V_b of kv_b_proj): then the scale needs at least that
    many rows. Returns the block size as two ints.
    """
    b0, b1 = block_size_of(block_size)
    weight_shape, scale_shape = tuple(weight_shape), tuple(scale_shape)
    if len(weight_shape) < 2:
        raise Fp8ScaleError(f"{name}: block-wise FP8 weights are 2-D (or stacked 2-D); got shape {weight_shape}.")
    rows, cols = weight_shape[-2:]
    need = (*weight_shape[:-2], math.ceil(rows / b0), math.ceil(cols / b1))
    fits = scale_shape == need
    if scale_rows is not None:  # a row subset: columns exact, rows at least those its rows index
        fits = (len(scale_shape) == len(need) and scale_shape[:-2] == need[:-2] and scale_shape[-1] == need[-1]
                and scale_shape[-2] >= scale_rows)
    if fits:
        return b0, b1
    where = f" in {shard}" if shard else ""
    raise Fp8ScaleError(
        f"{name}{where}: weight_scale_inv has shape {scale_shape}, but a {'x'.join(map(str, weight_shape))} FP8 "
        f"weight in {b0}x{b1} blocks needs {need} (ceil(rows/{b0}), ceil(cols/{b1})). Either config.json's "
        "quantization_config.weight_block_size does not match how the checkpoint was quantised, or the shard is "
        "damaged: fix weight_block_size, or download the shard again."
    )
