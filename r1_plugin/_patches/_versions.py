"""Which versions of TransformerLens, SAELens and transformers r1_plugin is tested with, and one warning outside
them. Imports nothing from the rest of `_patches` (the patch modules and `_marks` import it)."""

from __future__ import annotations

import warnings
from importlib import metadata

# The versions r1_plugin is tested with: for each package, [low, high) ranges on the release number. Outside them
# one warning at the first patch. TransformerLens 4 removed HookedTransformer: there only the TransformerBridge
# patches apply (`make compat-tl4` tests the newest 4.x without SAELens, which pins transformer-lens<4).
TESTED_VERSIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "transformer-lens": (("3.9", "3.10"), ("4.0", "5.0")),
    "sae-lens": (("6.54", "6.55"),),
    # r1_plugin patches nothing in transformers; it reads HF configs and loads the HF reference models in tests.
    "transformers": (("5.0", "6.0"),),
}

_checked = False


class PatchVersionWarning(UserWarning):
    """TransformerLens, SAELens or transformers is outside the versions r1_plugin is tested with."""


def tested_text(dist: str) -> str:
    """`>=3.9,<3.10 or >=4.0,<5.0`: the tested ranges of `dist`, as pip writes a range."""
    return " or ".join(f">={low},<{high}" for low, high in TESTED_VERSIONS[dist])


def installed_versions() -> dict[str, str | None]:
    """The installed version of every package in TESTED_VERSIONS (None when not installed)."""
    versions: dict[str, str | None] = {}
    for dist in TESTED_VERSIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def versions_text() -> str:
    """`transformer-lens 3.9.0, sae-lens 6.54.12, transformers 5.24.0` (for error messages)."""
    return ", ".join(f"{dist} {version or 'not installed'}" for dist, version in installed_versions().items())


def untested_versions() -> dict[str, str]:
    """Installed packages outside TESTED_VERSIONS, with the installed version."""
    from packaging.version import InvalidVersion, Version

    out: dict[str, str] = {}
    for dist, version in installed_versions().items():
        if version is None:
            continue
        try:
            release = Version(Version(version).base_version)
        except InvalidVersion:
            out[dist] = version
            continue
        if not any(Version(low) <= release < Version(high) for low, high in TESTED_VERSIONS[dist]):
            out[dist] = version
    return out


def check_versions() -> None:
    """Warn once (one warning naming every package) when a patched library is outside the tested versions."""
    global _checked
    if _checked:
        return
    _checked = True
    bad = untested_versions()
    if bad:
        found = ", ".join(f"{dist} {version}" for dist, version in bad.items())
        tested = ", ".join(f"{dist} {tested_text(dist)}" for dist in TESTED_VERSIONS)
        warnings.warn(
            f"r1_plugin is tested with {tested}; found {found}. Its patches may not fit these versions: "
            "`r1-plugin doctor` shows which applied; pin the tested versions if something breaks.",
            PatchVersionWarning,
            stacklevel=3,
        )
