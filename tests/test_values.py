"""r1_plugin.values: every checker accepts what it should and refuses the rest with InvalidValueError."""

import math

import pytest

from r1_plugin.errors import R1PluginError
from r1_plugin.values import InvalidValueError, finite, in_range, integer, positive


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1", None, True])
def test_finite_refuses_non_finite_and_non_numbers(bad):
    with pytest.raises(InvalidValueError, match="strength"):
        finite("strength", bad)


def test_checks_return_floats_and_bounds():
    assert finite("x", 3) == 3.0 and isinstance(finite("x", 3), float)
    assert positive("eps", 0.5) == 0.5
    assert positive("eps", 0, allow_zero=True) == 0.0
    assert in_range("eps", 1.0, 0.0, 1.0) == 1.0
    for bad in (0, -1e-9):
        with pytest.raises(InvalidValueError, match="> 0"):
            positive("eps", bad)
    with pytest.raises(InvalidValueError, match="between 0 and 1"):
        in_range("eps", 1.5, 0.0, 1.0)


def test_integer_refuses_floats_bools_and_out_of_range():
    assert integer("n", 4, at_least=1) == 4
    for bad in (1.0, True, "2"):
        with pytest.raises(InvalidValueError, match="integer"):
            integer("n", bad)
    with pytest.raises(InvalidValueError, match=">= 1"):
        integer("n", 0, at_least=1)
    with pytest.raises(InvalidValueError, match="<= 3"):
        integer("n", 4, at_most=3)
    assert issubclass(InvalidValueError, R1PluginError) and issubclass(InvalidValueError, ValueError)
