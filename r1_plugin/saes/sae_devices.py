"""Run SAE maths where the SAE lives: activations go to the SAE's device and dtype, results come back in the layer's.

With R1 spread over GPUs, an SAE often sits on another device than the block it reads (`--sae-device cuda:7`),
and in another dtype (a float32 SAE on a bfloat16 model). Every caller that encodes or decodes with an SAE goes
through `on_sae` (steering's add/clamp/ablate, the sweep's read-out, harvesting, the sink tools), so these moves
are made in exactly one place:

    feats = encode_on_sae(sae, act)                       # on act's device, in act's dtype
    delta = on_sae(sae, lambda x: sae.decode(sae.encode(x)) - x, act)

The SAE's placement is read from its decoder weight (`W_dec`), which every SAELens SAE and r1_plugin's have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def sae_placement(sae: Any) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the SAE's weights, read from `W_dec`."""
    weight = getattr(sae, "W_dec", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(sae).__name__} has no W_dec tensor: not an SAE r1_plugin can place")
    return weight.device, weight.dtype


def to_sae(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """`x` on the SAE's device and in its dtype (no copy when it already is)."""
    device, dtype = sae_placement(sae)
    return x.to(device=device, dtype=dtype)


def on_sae(
    sae: Any,
    fn: Callable[[torch.Tensor], torch.Tensor],
    act: torch.Tensor,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`fn(act moved to the SAE)`, moved back to `act`'s device, in `out_dtype` (default: `act`'s dtype)."""
    out = fn(to_sae(sae, act))
    return out.to(device=act.device, dtype=out_dtype or act.dtype)


def encode_on_sae(sae: Any, act: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`sae.encode(act)` computed on the SAE's device/dtype, returned on `act`'s device (in `out_dtype` or act's)."""
    return on_sae(sae, sae.encode, act, out_dtype)


def decode_on_sae(sae: Any, feats: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`sae.decode(feats)` computed on the SAE's device/dtype, returned on the device and dtype of `like`."""
    device, dtype = like.device, like.dtype
    return sae.decode(to_sae(sae, feats)).to(device=device, dtype=dtype)
