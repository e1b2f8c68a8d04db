"""`SteeringSpec`: what to steer with (an SAE feature or a direction at a hook, and how), validated once; `steer`,
`sweep_strengths` and the findings experiments all take it, and `check_strength` refuses strengths that are not
finite numbers where they enter."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from r1_plugin.errors import R1PluginError
from r1_plugin.values import InvalidValueError

MODES = ("add", "clamp", "ablate")


class SteeringSpecError(R1PluginError, ValueError):
    """A steering specification that cannot be steered with (nothing, or both, to steer with; a bad mode)."""


@dataclass(frozen=True)
class SteeringSpec:
    """What to steer with: an SAE feature (or several) or a direction at a hook; the steering keywords of `steer`.

    sae + feature: steer by SAE feature(s) (`mode` "add" adds the decoder row(s), "clamp" sets the activation(s),
    "ablate" sets them to 0); hook_name defaults to the SAE's hook. direction + hook_name: add a direction.
    normalize: use the direction's unit vector; relative: strength is a fraction of each position's norm.
    """

    sae: Any = None
    feature: int | Sequence[int] | None = None
    direction: Any = None
    hook_name: str | None = None
    mode: str = "add"
    normalize: bool = False
    relative: bool = False

    def __post_init__(self) -> None:
        if (self.sae is None) == (self.direction is None):
            raise SteeringSpecError("give either an SAE with feature(s) or a direction (exactly one)")
        if self.sae is not None and self.feature is None:
            raise SteeringSpecError("steering by SAE needs `feature` (an id or a list of ids)")
        if self.direction is not None and self.hook_name is None:
            raise SteeringSpecError("a direction needs `hook_name` (e.g. 'blocks.12.hook_resid_post')")
        if self.mode not in MODES:
            raise SteeringSpecError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode != "add" and self.sae is None:
            raise SteeringSpecError(f"mode={self.mode!r} needs an SAE feature; a direction is only added")

    def steer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `steer` / `sweep_strengths` this spec stands for."""
        return dict(sae=self.sae, feature=self.feature, direction=self.direction, hook_name=self.hook_name,
                    mode=self.mode, normalize=self.normalize, relative=self.relative)

    def describe(self) -> str:
        """Short text for reports."""
        if self.sae is not None:
            return f"SAE feature {self.feature} ({self.mode})"
        return f"direction at {self.hook_name}"


_DEFAULTS: dict[str, Any] = {"mode": "add", "normalize": False, "relative": False}


def keywords_given(**keywords: Any) -> list[str]:
    """Which steering keywords differ from their defaults (None; mode "add"; normalize/relative False), by name:
    a `spec` plus any of them is ambiguous. Compares by identity/str, never tensor equality."""
    return sorted(k for k, v in keywords.items()
                  if v is not None and not (k in _DEFAULTS and isinstance(v, (str, bool)) and v == _DEFAULTS[k]))


def check_strength(strength: Any, name: str = "strength") -> Any:
    """`strength` (a number, or one per batch row) if every value is a finite number, else InvalidValueError:
    an infinite or NaN strength would write inf/NaN into the residual stream."""
    import torch

    values = strength.detach().reshape(-1).tolist() if isinstance(strength, torch.Tensor) else (
        list(strength) if isinstance(strength, (list, tuple)) else [strength])
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidValueError(f"{name} must be a finite number (or one per batch row), got {strength!r}")
    return strength
