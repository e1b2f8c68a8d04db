"""SAE features as steering directions: add a decoder row, clamp a feature through the SAE, or ablate it.

- add: `strength * W_dec[feature]` (Neuronpedia's convention; `normalize=True` for the unit row).
- clamp: set the feature's activation to a value while keeping everything the SAE does not explain: with
  `f = encode(x)` and `f'` = f with the feature(s) set, `x' = decode(f') + (x - decode(f))` (the error term), i.e.
  for a linear decoder `x' = x + (value - f_i(x)) * W_dec[i]`. This is how Goodfire and Neuronpedia pin features;
  editing `hook_sae_acts_post` without the error term would also replace x by its reconstruction.
- ablate: clamp to 0 (only changes positions where the feature fires).

Works with any SAELens `SAE` (standard, top-k, JumpReLU, ...) and with r1_plugin's Goodfire SAEs, on any device and
in any dtype: the SAE maths runs where the SAE is (`r1_plugin.saes.sae_devices`) and what is written back to the
layer arrives on the layer's device and in its dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from r1_plugin.hook_names import (
    sae_hook_name as sae_hook_name,  # re-exported: r1_plugin.steering.sae_hook_name
)
from r1_plugin.saes.sae_devices import on_sae, sae_placement
from r1_plugin.steering.interventions import AddDirection, Intervention


def _feature_ids(sae: Any, feature: int | Sequence[int]) -> list[int]:
    ids = [int(feature)] if isinstance(feature, (int, torch.Tensor)) and torch.as_tensor(feature).dim() == 0 else [
        int(f) for f in feature  # type: ignore[union-attr]
    ]
    d_sae = int(sae.W_dec.shape[0])
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad or not ids:
        raise ValueError(f"feature ids {bad or ids} are out of range for an SAE with d_sae={d_sae}")
    return ids


def feature_direction(sae: Any, feature: int | Sequence[int], normalize: bool = False) -> torch.Tensor:
    """The decoder row of `feature` (the sum of rows for several, in float32), optionally unit-normalised.

    It stays on the SAE's device; `AddDirection` casts it to each hooked activation's device and dtype.
    """
    ids = _feature_ids(sae, feature)
    vec = sae.W_dec.detach()[ids].float().sum(0)
    if normalize:
        vec = vec / vec.norm()
    return vec


def encode_features(sae: Any, act: torch.Tensor, feature: int | Sequence[int]) -> torch.Tensor:
    """`[..., n_features]` activations of the given features for activations `act` `[..., d_in]`.

    Encoded on the SAE's device and in its dtype; returned on `act`'s device, in the SAE's dtype (a read-out
    keeps the SAE's precision).
    """
    ids = _feature_ids(sae, feature)
    flat = act.reshape(*act.shape[:2], -1) if act.dim() > 3 else act
    with torch.no_grad():
        return on_sae(sae, lambda x: sae.encode(x)[..., ids], flat, out_dtype=sae_placement(sae)[1])


def _linear_decoder(sae: Any) -> bool:
    cfg = sae.cfg
    return (
        getattr(cfg, "normalize_activations", "none") == "none"
        and not getattr(cfg, "rescale_acts_by_decoder_norm", False)
        and getattr(cfg, "reshape_activations", "none") == "none"
    )


class SAEClamp(Intervention):
    """Set SAE feature activation(s) to `values` at gated positions, through the SAE with the error term."""

    def __init__(self, sae: Any, feature: int | Sequence[int], values: float | Sequence[float] | torch.Tensor):
        self.sae = sae
        self.ids = _feature_ids(sae, feature)
        v = torch.as_tensor(values, dtype=torch.float32)
        if v.dim() > 1:
            raise ValueError("clamp values: a number (all rows/features) or one per batch row")
        self.values = v
        self.linear = _linear_decoder(sae)

    def apply(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = act.shape
        with torch.no_grad():  # the SAE maths on the SAE's device/dtype; the edit back in the layer's
            delta = on_sae(self.sae, self._delta, act.reshape(*shape[:2], -1))
        delta = delta * mask.unsqueeze(-1).to(delta.dtype)
        return act + delta.reshape(shape)

    def _delta(self, x: torch.Tensor) -> torch.Tensor:
        """`decode(f') - decode(f)` for `x` `[batch, n, d_in]` already on the SAE's device and in its dtype."""
        feats = self.sae.encode(x)
        values = self.values.to(feats.device, feats.dtype)
        target = values.reshape(-1, 1, 1) if values.dim() == 1 else values  # per-row values
        if self.linear:
            current = feats[..., self.ids]
            return (target - current) @ self.sae.W_dec[self.ids]
        edited = feats.clone()
        edited[..., self.ids] = target.expand_as(edited[..., self.ids])
        return self.sae.decode(edited) - self.sae.decode(feats)


def sae_intervention(
    sae: Any,
    feature: int | Sequence[int],
    strength: float | Sequence[float] | torch.Tensor = 1.0,
    mode: str = "add",
    normalize: bool = False,
    relative: bool = False,
) -> Intervention:
    """The intervention for `steer(model, sae=..., feature=..., mode=...)`: add, clamp or ablate."""
    if mode == "add":
        return AddDirection(feature_direction(sae, feature, normalize or relative), strength, relative)
    if mode == "clamp":
        return SAEClamp(sae, feature, strength)
    if mode == "ablate":
        return SAEClamp(sae, feature, 0.0)
    raise ValueError(f"mode must be 'add', 'clamp' or 'ablate', got {mode!r}")
