"""Goodfire's R1 findings as experiments that run on any model and SAE, one module per claim.

    from r1_plugin.experiments import prefix_gating, oversteer, segments, sink_check
    result = prefix_gating(model, ["What is 7 + 8?"], sae=sae, feature=12, strength=8.0)
    result.table; result.summary; result.plot(); result.to_markdown(); result.log(tracker); result.save("out")

See docs/findings.md for the metrics and what each result would mean. The package exports the four experiment
functions under their names; their modules have distinct names (`gating`, `oversteering`, `segmentation`,
`sink_positions`), so `import r1_plugin.experiments.gating as m` gives a module, never a function. `sinks`, the
old name of `sink_check` (it clashed with the `r1_plugin.sinks` package), still works for one release with a
DeprecationWarning.
"""

from __future__ import annotations

import warnings
from typing import Any

from r1_plugin.experiments.base import ExperimentError, ExperimentResult, bootstrap_ci
from r1_plugin.experiments.gating import prefix_gating
from r1_plugin.experiments.oversteering import oversteer
from r1_plugin.experiments.segmentation import segments
from r1_plugin.experiments.sink_positions import sink_check
from r1_plugin.steering.spec import SteeringSpec

__all__ = ["ExperimentError", "ExperimentResult", "SteeringSpec", "bootstrap_ci", "oversteer", "prefix_gating",
           "segments", "sink_check"]

_RENAMED = {"sinks": "sink_check"}  # old name -> new name, kept for one release (never bound in this module)


def __getattr__(name: str) -> Any:
    """The old names of renamed experiments (`sinks` -> `sink_check`), with a DeprecationWarning; else AttributeError."""
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"r1_plugin.experiments.{name} is deprecated and goes in the next release: use "
                      f"r1_plugin.experiments.{new} (the same function; `{name}` clashed with the r1_plugin.sinks "
                      "package)", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
