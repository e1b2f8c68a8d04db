"""Where a DeepSeek-V3 checkpoint's files are (a local folder or the HF cache, fetched one file at a time), and
reading its config, index and shards with errors that name the damaged file and how to fetch it again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from r1_plugin.errors import CheckpointError, MissingFromCacheError, missing_from_cache

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
# The dtypes a checkpoint may store weights in (float, or FP8 with a scale); anything else is a damaged shard.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2)


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """Open one shard for lazy per-tensor reads (module-level so tests can instrument shard access)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        yield handle


class CheckpointFiles:
    """Resolves a checkpoint's files in a local folder or the HF cache (downloading lazily, one file at a time)."""

    def __init__(self, name: str, hub_kwargs: dict[str, Any]) -> None:
        self.name = name
        # Local folders arrive absolute (r1_plugin.models.local_folders); a relative name is a hub id even if a folder of
        # that name happens to exist in the working directory.
        self.local = Path(name) if Path(name).is_absolute() and Path(name).is_dir() else None
        self.hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS}
        self.cache_misses: list[str] = []  # files `exists` found absent only because they are not cached offline

    def refetch_hint(self, filename: str) -> str:
        """What to do about a damaged or missing `filename`: the command that fetches it again."""
        if self.local is not None:
            return (
                f"copy {filename} into {self.local} again from the original download (e.g. `hf download <repo> "
                f"{filename} --local-dir {self.local} --force-download`)"
            )
        return f"fetch it again: `hf download {self.name} {filename} --force-download`"

    def damaged(self, filename: str, what: str) -> CheckpointError:
        """The error for a damaged checkpoint file: which file, what is wrong, and how to fetch it again."""
        where = self.local / filename if self.local is not None else f"{filename} of {self.name}"
        return CheckpointError(f"{where}: {what}; {self.refetch_hint(filename)}")

    def path(self, filename: str) -> Path:
        """Local path of `filename`, fetched through huggingface_hub for hub repos."""
        if self.local is not None:
            path = self.local / filename
            if not path.is_file():
                raise CheckpointError(
                    f"{path} does not exist: the checkpoint folder is incomplete; {self.refetch_hint(filename)}"
                )
            return path
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with missing_from_cache(self.name, filename):
            try:
                return Path(hf_hub_download(self.name, filename, **self.hub_kwargs))
            except RemoteEntryNotFoundError as exc:  # the hub answered: the repo has no such file
                revision = self.hub_kwargs.get("revision")
                raise CheckpointError(
                    f"{self.name}{f' at revision {revision}' if revision else ''} has no file {filename}: the "
                    "checkpoint's index names a file the repo does not hold, or the name or revision is wrong"
                ) from exc

    def exists(self, filename: str) -> bool:
        """Whether the checkpoint has `filename` (without downloading weights)."""
        if self.local is not None:
            return (self.local / filename).is_file()
        try:
            self.path(filename)
            return True
        except MissingFromCacheError:
            self.cache_misses.append(filename)
            return False
        except CheckpointError:  # the hub says the repo has no such file
            return False
        except (FileNotFoundError, OSError):
            return False
        except Exception as exc:  # huggingface_hub raises its own types for missing entries
            if type(exc).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError"):
                return False
            raise

    def _json(self, filename: str) -> dict[str, Any]:
        """A JSON object file of the checkpoint, or an error naming it when it is not one."""
        path = self.path(filename)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self.damaged(filename, f"is not valid JSON (truncated or corrupt: {exc})") from exc
        if not isinstance(data, dict):
            raise self.damaged(filename, f"holds a JSON {type(data).__name__}, not an object")
        return data

    def config(self) -> dict[str, Any]:
        """The raw config.json."""
        return self._json(CONFIG_FILE)

    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file name, from the index file or the single model.safetensors."""
        if self.exists(INDEX_FILE):
            weight_map = self._json(INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise self.damaged(INDEX_FILE, "has no `weight_map` (tensor name -> shard file) object")
            bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v.endswith(".safetensors")]
            if bad:
                raise self.damaged(
                    INDEX_FILE, f"maps {bad[:3]} to {[weight_map[k] for k in bad[:3]]}, not to .safetensors files"
                )
            return dict(weight_map)
        if self.exists(SINGLE_FILE):
            with self.open(SINGLE_FILE) as handle:
                return {key: SINGLE_FILE for key in handle.keys()}
        if INDEX_FILE in self.cache_misses and SINGLE_FILE in self.cache_misses:
            raise MissingFromCacheError(self.name, f"{INDEX_FILE} (or {SINGLE_FILE}) and its safetensors shards")
        raise CheckpointError(
            f"{self.local or self.name} has neither {INDEX_FILE} nor {SINGLE_FILE}: "
            f"{self.refetch_hint(INDEX_FILE)} and the shards it lists"
        )

    def check_shards_present(self, shards: list[str]) -> None:
        """In a local folder, every shard the index names must exist (checked before reading any weight)."""
        if self.local is None:
            return  # hub repos fetch each shard when it is read; a missing one is named then
        missing = [s for s in shards if not (self.local / s).is_file()]
        if missing:
            raise CheckpointError(
                f"{self.local / INDEX_FILE} names {len(missing)} shard(s) that are not in the folder, e.g. "
                f"{missing[:5]}: the download is incomplete; {self.refetch_hint(missing[0])}"
            )

    @contextmanager
    def open(self, filename: str) -> Iterator[Any]:
        """Open shard `filename` for lazy reads; a truncated or corrupt shard is an error naming it."""
        from safetensors import SafetensorError

        path = self.path(filename)
        with ExitStack() as stack:
            try:
                handle = stack.enter_context(open_safetensors(path))
            except SafetensorError as exc:
                raise self.damaged(
                    filename, f"is not a readable safetensors file, likely truncated or corrupt ({exc})"
                ) from exc
            yield handle

    def tensor(self, handle: Any, key: str, filename: str) -> torch.Tensor:
        """Tensor `key` from the open shard `filename`; an error naming both when the shard does not hold it."""
        from safetensors import SafetensorError

        try:
            return handle.get_tensor(key)
        except SafetensorError as exc:
            raise self.damaged(
                filename, f"does not hold tensor {key}, which {INDEX_FILE} places there ({exc})"
            ) from exc
