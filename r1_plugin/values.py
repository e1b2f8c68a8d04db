"""Checks for values where they enter r1_plugin (Python arguments, CLI flags, configs): one clear error each.

A bad number must never become silently wrong numbers later (0 * inf = NaN in a closed gate, a negative epsilon
that matches everything): every public entry point checks its numeric arguments with these, and the CLI calls
the same functions, so a check `scan_sinks()` makes is the check `r1-plugin sinks` makes.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from r1_plugin.errors import R1PluginError


class InvalidValueError(R1PluginError, ValueError):
    """An argument or setting whose value cannot work (non-finite, out of range, wrong type)."""


def _number(name: str, value: object) -> float:
    """`value` as a float, refusing bools, non-numbers and NaN/inf."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidValueError(f"{name} must be a finite number, got {value!r}")
    return number


def finite(name: str, value: object) -> float:
    """`value` as a finite float (NaN and +-inf are refused)."""
    return _number(name, value)


def positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """`value` as a finite float > 0 (>= 0 with allow_zero)."""
    number = _number(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return number


def in_range(name: str, value: object, low: float, high: float) -> float:
    """`value` as a finite float with low <= value <= high."""
    number = _number(name, value)
    if not low <= number <= high:
        raise InvalidValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def integer(name: str, value: object, *, at_least: int | None = None, at_most: int | None = None) -> int:
    """`value` as an int within [at_least, at_most] (bools and floats are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidValueError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if at_least is not None and number < at_least:
        raise InvalidValueError(f"{name} must be >= {at_least}, got {number}")
    if at_most is not None and number > at_most:
        raise InvalidValueError(f"{name} must be <= {at_most}, got {number}")
    return number
