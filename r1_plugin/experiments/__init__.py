"""Goodfire's R1 findings as experiments that run on any model and SAE, one module per claim.

    from r1_plugin.experiments import prefix_gating, oversteer, segments, sinks
    result = prefix_gating(model, ["What is 7 + 8?"], sae=sae, feature=12, strength=8.0)
    result.table; result.summary; result.plot(); result.to_markdown(); result.log(tracker); result.save("out")

See docs/findings.md for the metrics and what each result would mean. The package exports the four experiment
functions under their names; their modules have distinct names (`gating`, `oversteering`, `segmentation`,
`sink_check`), so `import r1_plugin.experiments.gating as m` gives a module, never a function.
"""

from __future__ import annotations

from r1_plugin.experiments.base import ExperimentError, ExperimentResult, bootstrap_ci
from r1_plugin.experiments.gating import prefix_gating
from r1_plugin.experiments.oversteering import oversteer
from r1_plugin.experiments.segmentation import segments
from r1_plugin.experiments.sink_check import sinks
from r1_plugin.steering.spec import SteeringSpec

__all__ = ["ExperimentError", "ExperimentResult", "SteeringSpec", "bootstrap_ci", "oversteer", "prefix_gating",
           "segments", "sinks"]
