"""pytest plugin (`-p r1_compat_import`) for scripts/tl_compat.py: imports r1_plugin before any test module."""

from __future__ import annotations

import json
import os

import r1_plugin  # noqa: F401  (the import under test)


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """Record which of r1_plugin's patches were applied by the end of the run (the comparison checks them)."""
    from r1_plugin._patches import patch_status

    report = os.environ.get("R1_COMPAT_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump(patch_status(), f, indent=1)
