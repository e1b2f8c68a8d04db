"""Every exception class r1_plugin defines subclasses R1PluginError (so `except R1PluginError` catches them all)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import r1_plugin
from r1_plugin.errors import R1PluginError


def package_modules() -> list[str]:
    """Every importable module of r1_plugin except entry points that run on import (`__main__`)."""
    names = [m.name for m in pkgutil.walk_packages(r1_plugin.__path__, prefix="r1_plugin.")]
    return sorted(n for n in names if not n.endswith("__main__"))


def test_every_exception_class_subclasses_r1pluginerror() -> None:
    found: dict[str, type] = {}
    for name in package_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException) and not issubclass(obj, Warning):
                found[f"{name}.{obj.__qualname__}"] = obj
    # The walk really sees the package's errors, including the two that used to be bare ValueErrors.
    assert {"r1_plugin.tracking.mode.TrackingError", "r1_plugin.training.SAETrainingError"} <= set(found)
    assert len(found) >= 15
    bad = sorted(name for name, cls in found.items() if not issubclass(cls, R1PluginError))
    assert not bad, f"exception classes that do not subclass R1PluginError: {bad}"


def test_backwards_compatible_bases_are_kept() -> None:
    from r1_plugin.tracking import TrackingError
    from r1_plugin.training import SAETrainingError

    assert issubclass(TrackingError, ValueError) and issubclass(SAETrainingError, ValueError)
