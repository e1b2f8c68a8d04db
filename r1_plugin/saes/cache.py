"""A safetensors copy of a downloaded .pt SAE, kept next to its HF cache entry, so later loads skip unpickling.

The copy lives in `<HF cache>/models--<org>--<name>/r1_plugin/safetensors/<key>.safetensors`, where `<key>` is the
name of the blob the snapshot file links to: huggingface_hub names blobs by the file's hash (sha256 for LFS
files), so a re-uploaded file (a new revision with new bytes) gets a new copy and a stale copy is never used.
Deleting the repo from the HF cache (`hf cache delete`) deletes the copies with it. Set
`R1_PLUGIN_SAE_SAFETENSORS_CACHE=0` to turn the copies off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

ENV_SWITCH = "R1_PLUGIN_SAE_SAFETENSORS_CACHE"
SUBDIR = ("r1_plugin", "safetensors")

StateDict = dict[str, torch.Tensor]


def enabled() -> bool:
    """Whether safetensors copies are used (on unless R1_PLUGIN_SAE_SAFETENSORS_CACHE is 0/false/no/off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def copy_path(file_path: str | Path) -> Path | None:
    """Where the safetensors copy of a file in the HF cache goes, or None when the file is not in an HF cache."""
    file_path = Path(file_path)
    resolved = file_path.resolve()
    if resolved.parent.name == "blobs":  # the normal layout: snapshots/<commit>/<path> -> ../../blobs/<hash>
        return resolved.parent.parent.joinpath(*SUBDIR, f"{resolved.name}.safetensors")
    parts = file_path.parts
    if "snapshots" not in parts:
        return None
    # A cache without symlinks (e.g. Windows) holds real files in snapshots/<commit>/: key on commit + path + size.
    idx = len(parts) - 1 - parts[::-1].index("snapshots")
    if idx + 2 >= len(parts):
        return None
    repo_dir = Path(*parts[:idx])
    ident = f"{'/'.join(parts[idx + 1 :])}:{file_path.stat().st_size}"
    key = hashlib.sha256(ident.encode()).hexdigest()
    return repo_dir.joinpath(*SUBDIR, f"{key}.safetensors")


def _write_copy(state: StateDict, target: Path, source: Path) -> None:
    """Write `state` to `target` atomically (temp file + rename); a failure only warns: the copy is an optimisation."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.incomplete")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
        save_file(tensors, str(tmp), metadata={"source": source.name, "written_by": "r1_plugin"})
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write the safetensors copy {target} ({exc}); later loads will unpickle again",
                      stacklevel=3)


def load_with_copy(file_path: str | Path, load_original: Callable[[Path], StateDict]) -> tuple[StateDict, str]:
    """Load `file_path` from its safetensors copy when one exists, else with `load_original` and write the copy.

    Returns the state dict and which path was taken ("safetensors" or "original").
    """
    file_path = Path(file_path)
    target = copy_path(file_path) if enabled() else None
    if target is not None and target.is_file():
        try:
            state = load_file(str(target))
            logger.debug("loaded %s from its safetensors copy %s", file_path, target)
            return state, "safetensors"
        except (SafetensorError, OSError) as exc:  # a damaged or unreadable copy: drop it, use the original file
            warnings.warn(f"ignoring the damaged safetensors copy {target} ({exc}); rebuilding it", stacklevel=2)
            target.unlink(missing_ok=True)
    state = load_original(file_path)
    if target is not None:
        _write_copy(state, target, file_path)
    return state, "original"
