"""Position-gated steering for R1 that is exact under KV-cache generation.

    from r1_plugin.steering import steer, AfterResponsePrefix
    with steer(model, hook_name="blocks.37.hook_resid_post", direction=vec, strength=8.0,
               gate=AfterResponsePrefix()) as result:
        out = model.generate(tokens, max_new_tokens=256, use_past_kv_cache=True)

See docs/steering.md.
"""

from __future__ import annotations

from r1_plugin.steering.gates import (
    AfterResponsePrefix,
    AfterText,
    AllOf,
    Always,
    FromPosition,
    FromPositions,
    Gate,
    GatePatternError,
    GateRunner,
    GeneratedOnly,
    ResponsePrefixScanner,
    Thinking,
    Until,
    Window,
    as_gate,
)
from r1_plugin.steering.sae_directions import (
    SAEClamp,
    encode_features,
    feature_direction,
    sae_hook_name,
    sae_intervention,
)
from r1_plugin.steering.spec import SteeringSpec, SteeringSpecError
from r1_plugin.steering.steer import (
    AddDirection,
    GateNeverOpenedWarning,
    GateRecord,
    Intervention,
    SteeringResult,
    steer,
)

__all__ = [
    "steer",
    "SteeringSpec",
    "SteeringSpecError",
    "FromPosition",
    "FromPositions",
    "AfterText",
    "AfterResponsePrefix",
    "Always",
    "GeneratedOnly",
    "Until",
    "Window",
    "Thinking",
    "AllOf",
    "Gate",
    "GateRunner",
    "GatePatternError",
    "as_gate",
    "ResponsePrefixScanner",
    "SteeringResult",
    "GateRecord",
    "GateNeverOpenedWarning",
    "Intervention",
    "AddDirection",
    "SAEClamp",
    "feature_direction",
    "encode_features",
    "sae_hook_name",
    "sae_intervention",
]
