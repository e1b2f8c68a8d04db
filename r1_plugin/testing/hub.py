"""Write files into the Hugging Face cache layout (blobs/, snapshots/<commit>/, refs/<revision>) under a repo id."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

FileContent = bytes | str | Path


def _as_bytes(content: FileContent) -> bytes:
    if isinstance(content, Path):
        return content.read_bytes()
    if isinstance(content, str):
        return content.encode("utf-8")
    return bytes(content)


def repo_folder(repo_id: str, repo_type: str = "model", cache_dir: str | Path | None = None) -> Path:
    """The cache folder of a repo (`models--org--name`), as huggingface_hub names it."""
    from huggingface_hub import constants

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    return cache / f"{repo_type}s--{repo_id.replace('/', '--')}"


def write_hf_repo(
    repo_id: str,
    files: Mapping[str, FileContent],
    revision: str = "main",
    cache_dir: str | Path | None = None,
    repo_type: str = "model",
) -> Path:
    """Store `files` (path in repo -> content) as one commit of `repo_id` in the HF cache; returns the snapshot dir.

    The layout is the one `hf_hub_download` writes (content-addressed blobs, snapshot symlinks, a ref file),
    so `hf_hub_download`/`from_pretrained` find the files offline exactly as after a real download.
    """
    root = repo_folder(repo_id, repo_type, cache_dir)
    payloads = {name: _as_bytes(content) for name, content in files.items()}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    commit = hashlib.sha1("".join(f"{n}:{d};" for n, d in sorted(digests.items())).encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in payloads.items():
        blob = root / "blobs" / digests[name]
        if not blob.exists():
            tmp = blob.with_suffix(".incomplete")
            tmp.write_bytes(data)
            tmp.replace(blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return snapshot
