"""Which W&B mode a run uses (offline unless an API key is configured), and the versions a run records."""

from __future__ import annotations

import importlib.metadata
import logging
import netrc
import os

from r1_plugin.errors import R1PluginError

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "r1-plugin"
MODES: tuple[str, ...] = ("offline", "online", "disabled")
VERSIONED_PACKAGES: tuple[str, ...] = (
    "r1-plugin",
    "torch",
    "transformer-lens",
    "sae-lens",
    "transformers",
    "wandb",
)
# Seconds an online start may take before it is abandoned (then the run falls back to offline).
ONLINE_INIT_TIMEOUT_S = 30.0


class TrackingError(R1PluginError, ValueError):
    """Bad arguments to the tracking API (unknown mode, missing columns, wrong shapes)."""


def package_versions() -> dict[str, str | None]:
    """Installed versions of r1_plugin and the libraries whose behaviour a logged result depends on."""
    versions: dict[str, str | None] = {}
    for dist in VERSIONED_PACKAGES:
        try:
            versions[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = None
    return versions


def _has_api_key() -> bool:
    """Whether a W&B API key is configured (env or netrc), without contacting the server or prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str | None = None) -> str:
    """The W&B mode to use: explicit `mode`, else WANDB_MODE, else online only if an API key is configured."""
    chosen = mode or os.environ.get("WANDB_MODE") or None
    if chosen is not None:
        chosen = chosen.strip().lower()
        if chosen == "dryrun":  # wandb's legacy spelling of offline
            chosen = "offline"
        if chosen == "run":
            chosen = "online"
        if chosen not in MODES:
            raise TrackingError(f"unknown W&B mode {chosen!r}: use one of {', '.join(MODES)}")
        if chosen == "online" and not _has_api_key():
            logger.warning("W&B mode 'online' but no API key is configured: logging offline instead")
            return "offline"
        return chosen
    return "online" if _has_api_key() else "offline"
