"""Errors r1_plugin raises, each saying what went wrong and what to do."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


class R1PluginError(Exception):
    """Base class for r1_plugin errors."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE, which huggingface_hub honours too) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "on", "yes", "true")


class UnknownModelError(R1PluginError, ValueError):
    """A model name that neither r1_plugin nor TransformerLens knows."""


class UnsupportedArchitectureError(R1PluginError, NotImplementedError):
    """A local checkpoint whose architecture cannot be loaded as a HookedTransformer."""


class ModelDoesNotFitError(R1PluginError, MemoryError):
    """A model whose device plan (r1_plugin.plan_devices) overflows a device; raised before any weight is read."""


class SAEMaskError(R1PluginError, ValueError):
    """An attention mask that does not fit the activations given to a batch top-k SAE encode."""


class MissingFromCacheError(R1PluginError, FileNotFoundError):
    """A file that is not in the local HF cache while the hub is unreachable or offline mode is on."""

    def __init__(self, repo_id: str, filename: str | None = None, detail: str = "") -> None:
        from huggingface_hub import constants

        what = f"'{filename}' of '{repo_id}'" if filename else f"the files of '{repo_id}'"
        offline = hub_offline()
        # A description ("model weights (*.safetensors)") is not a path: then the command fetches the whole repo.
        is_path = bool(filename) and not any(c in filename for c in " ()*,")
        fetch = f"hf download {repo_id}" + (f" {filename}" if is_path else "")
        msg = (
            f"{what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
            + (" and HF_HUB_OFFLINE is set" if offline else " and the hub could not be reached")
            + f". Fetch it on a machine with hub access, e.g. `{fetch}` "
            "(or `huggingface_hub.snapshot_download`), with HF_HUB_CACHE pointing at this cache"
            + ("; or unset HF_HUB_OFFLINE to download it now." if offline else ".")
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.message = msg
        self.repo_id = repo_id
        self.filename = filename

    def __str__(self) -> str:
        # OSError.__new__ takes (repo_id, filename) as (errno, strerror); print our message instead.
        return self.message


def is_missing_file_error(exc: BaseException) -> bool:
    """Whether an exception from huggingface_hub/transformers means 'not cached and cannot download'."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        return True
    text = str(exc)
    offline = hub_offline()
    if offline and isinstance(exc, OSError) and "does not appear to have a file named" in text:
        return True  # transformers' wording when offline and the weights were never cached
    return isinstance(exc, OSError) and (
        "offline mode" in text
        or "couldn't connect" in text
        or "cached files" in text
        or "HF_HUB_OFFLINE" in text
        or "outgoing traffic has been disabled" in text
    )


@contextmanager
def missing_from_cache(repo_id: str, filename: str | None = None, *, detail: bool = False) -> Iterator[None]:
    """Inside the block, an error meaning 'not cached and cannot download' becomes MissingFromCacheError naming
    `filename` of `repo_id` (with the original message as detail when `detail`); every other error passes as is."""
    try:
        yield
    except Exception as exc:
        if is_missing_file_error(exc):
            raise MissingFromCacheError(repo_id, filename, str(exc) if detail else "") from exc
        raise


class CheckpointError(R1PluginError, ValueError):
    """A checkpoint file (config, index or safetensors shard) that is damaged or does not match its config."""


class PatchTargetError(R1PluginError, RuntimeError):
    """A TransformerLens/SAELens attribute one of r1_plugin's patches replaces does not exist in this version."""
