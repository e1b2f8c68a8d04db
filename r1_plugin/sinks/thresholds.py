"""The sink and massive-activation thresholds: one frozen dataclass, validated once, taken by every sink entry point.

    from r1_plugin.sinks import SinkThresholds, scan_sinks
    scan_sinks(model, tokens, thresholds=SinkThresholds(epsilon=0.2, min_queries=4))

The detectors (`scan_sinks`, `find_attention_sinks`, `find_massive_activations`), the generation monitor
(`SinkMonitor`), R1's prefix-end check (`check_response_prefix_sink`) and `r1-plugin sinks` all take a
`SinkThresholds`; the CLI's flags are checked with the same `check_*` functions as `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from r1_plugin.sinks._scan import SinkDetectionError
from r1_plugin.values import InvalidValueError, in_range, integer, positive

DEFAULT_EPSILON = 0.3
# A position is reported as a sink when at least this fraction of (layer, head) pairs have alpha > epsilon.
DEFAULT_MIN_SINK_RATE = 0.1
# ... and at least this many queries can see it: alpha of the last few positions averages over 1-3 queries, so a
# head that only attends locally (total attention <= ~2 summed over queries) would give alpha >= 0.3 there.
DEFAULT_MIN_QUERIES = 8
DEFAULT_MIN_VALUE = 100.0
DEFAULT_MIN_RATIO = 1000.0
DEFAULT_CHUNK_SIZE = 512


class SinkThresholdError(SinkDetectionError, InvalidValueError):
    """A sink threshold whose value cannot work (NaN, negative, an epsilon outside [0, 1], a chunk of 0 queries)."""


def _checked(check: Any, *args: Any, **kwargs: Any) -> Any:
    """`check(*args, **kwargs)` with its InvalidValueError raised as a SinkThresholdError."""
    try:
        return check(*args, **kwargs)
    except SinkThresholdError:
        raise
    except InvalidValueError as exc:
        raise SinkThresholdError(str(exc)) from None


def check_epsilon(value: object) -> float:
    """Gu et al.'s alpha threshold: a number in [0, 1]."""
    return _checked(in_range, "epsilon", value, 0.0, 1.0)


def check_min_sink_rate(value: object) -> float:
    """The share of (layer, head) pairs a sink needs: a number in [0, 1]."""
    return _checked(in_range, "min_sink_rate", value, 0.0, 1.0)


def check_min_queries(value: object) -> int:
    """Real queries a sink needs at or after it: an integer >= 1."""
    return _checked(integer, "min_queries", value, at_least=1)


def check_min_value(value: object) -> float:
    """Massive activations: |value| above this; a finite number >= 0."""
    return _checked(positive, "min_value", value, allow_zero=True)


def check_min_ratio(value: object) -> float:
    """Massive activations: at least this many times the layer median; a finite number >= 0."""
    return _checked(positive, "min_ratio", value, allow_zero=True)


def check_chunk_size(value: object) -> int | None:
    """Queries per forward chunk: an integer >= 1, or None for one unchunked forward."""
    return None if value is None else _checked(integer, "chunk_size", value, at_least=1)


CHECKS = {
    "epsilon": check_epsilon,
    "min_sink_rate": check_min_sink_rate,
    "min_queries": check_min_queries,
    "min_value": check_min_value,
    "min_ratio": check_min_ratio,
    "chunk_size": check_chunk_size,
}


@dataclass(frozen=True)
class SinkThresholds:
    """What counts as an attention sink or a massive activation, and the query chunk of a one-shot scan.

    epsilon: alpha threshold (Gu et al.: 0.3). min_sink_rate: share of (layer, head) pairs with alpha > epsilon a
    sink needs. min_queries: real queries at or after a sink. min_value / min_ratio: Sun et al.'s massive
    activation, |value| > min_value and >= min_ratio x the layer median. chunk_size: queries per forward chunk of a
    one-shot scan (None: one forward); the generation monitor runs one token at a time and ignores it.
    """

    epsilon: float = DEFAULT_EPSILON
    min_sink_rate: float = DEFAULT_MIN_SINK_RATE
    min_queries: int = DEFAULT_MIN_QUERIES
    min_value: float = DEFAULT_MIN_VALUE
    min_ratio: float = DEFAULT_MIN_RATIO
    chunk_size: int | None = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        """Check every field (SinkThresholdError names the bad one) and store it as float / int."""
        for name, check in CHECKS.items():
            object.__setattr__(self, name, check(getattr(self, name)))

    def replace(self, **changes: Any) -> SinkThresholds:
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)


def resolve_thresholds(thresholds: SinkThresholds | None, deprecated: dict[str, Any], where: str) -> SinkThresholds:
    """`thresholds` (default: SinkThresholds()), updated by the old per-threshold keywords with a DeprecationWarning.

    The keywords (`epsilon=`, `min_sink_rate=`, ...) keep working for one release; any other keyword is a
    TypeError, as Python's own would be.
    """
    if thresholds is not None and not isinstance(thresholds, SinkThresholds):
        raise TypeError(f"{where}(): thresholds must be a SinkThresholds, got {type(thresholds).__name__}")
    unknown = sorted(set(deprecated) - set(CHECKS))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {unknown}")
    base = thresholds if thresholds is not None else SinkThresholds()
    if not deprecated:
        return base
    given = ", ".join(f"{k}={v!r}" for k, v in deprecated.items())
    warnings.warn(
        f"{where}({given}) is deprecated: pass thresholds=SinkThresholds({given}) "
        "(r1_plugin.sinks.SinkThresholds); the separate keywords go in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return base.replace(**deprecated)
