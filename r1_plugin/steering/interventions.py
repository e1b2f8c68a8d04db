"""What steering does at a gated position: the `Intervention` interface and `AddDirection` (its own module so that
`steer` and `sae_directions`, which both build interventions, do not import each other)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Intervention:
    """How a gated position is changed: `apply(act, mask)` returns the new activation."""

    def apply(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`act` `[batch, n, ...]`, `mask` `[batch, n]` bool: the steered activation."""
        raise NotImplementedError


class AddDirection(Intervention):
    """Add `strength * direction` (per-row strengths allowed); `relative` scales by each position's norm."""

    def __init__(
        self, direction: torch.Tensor, strength: float | Sequence[float] | torch.Tensor, relative: bool = False
    ) -> None:
        from r1_plugin.values import InvalidValueError

        self.direction = direction.detach()
        if not bool(torch.isfinite(self.direction).all()):
            raise InvalidValueError("the steering direction has inf or NaN entries")
        self.strength = torch.as_tensor(strength, dtype=torch.float32).detach()
        if self.strength.dim() > 1:
            raise ValueError("strength must be a number or a 1-d sequence (one per batch row)")
        if not bool(torch.isfinite(self.strength).all()):
            raise InvalidValueError(f"strength must be finite, got {strength!r}")
        self.relative = relative
        self._cache: dict[tuple[Any, Any], tuple[torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-or-raw direction, strength x direction) on the activation's dtype/device, cached."""
        key = (act.dtype, act.device)
        if key not in self._cache:
            direction = self.direction.to(act.device, act.dtype)
            strength = self.strength.to(act.device, act.dtype)
            per_row = strength.reshape(-1, *([1] * direction.dim())) if strength.dim() == 1 else strength
            self._cache[key] = (direction, per_row * direction)
        return self._cache[key]

    def apply(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        direction, delta = self._tensors(act)
        if direction.shape != act.shape[2:]:
            raise ValueError(
                f"direction has shape {tuple(direction.shape)} but the hook's activation is "
                f"{tuple(act.shape)} ([batch, pos, ...]): give a direction of shape {tuple(act.shape[2:])}"
            )
        if self.strength.dim() == 1:
            if self.strength.shape[0] != act.shape[0]:
                raise ValueError(f"{self.strength.shape[0]} strengths given for a batch of {act.shape[0]} rows")
            delta = delta.unsqueeze(1)  # [batch, 1, ...]
        is_open = mask.reshape(*mask.shape, *([1] * direction.dim()))
        gate = is_open.to(act.dtype)
        if self.relative:
            dims = tuple(range(2, act.dim()))
            gate = gate * act.norm(dim=dims, keepdim=True)
        # A closed position is returned untouched, even where the edit overflows the dtype (0 * inf is NaN).
        return torch.where(is_open, torch.addcmul(act, gate, delta), act)
