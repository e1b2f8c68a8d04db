"""Test-only oracle: decodes W&B's private binary run file (`run-<id>.wandb`) to check what wandb itself wrote.

The package never parses this format: r1_plugin's `Tracker` keeps a plain JSON-lines copy of what it logs,
read by `r1_plugin.tracking.read_offline_run`. This oracle serves two checks that need wandb's own record:
that the plain copy agrees with it, and what SAELens logged straight through `wandb.log` during SAE
training (wandb 0.31 writes no config.yaml / wandb-summary.json while offline, and ships no reader).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from r1_plugin.tracking import OfflineRun

# Seconds to wait for wandb's writer to flush the exit record (it may land just after `run.finish` returns).
FLUSH_TIMEOUT_S = 10.0


class WandbFileError(ValueError):
    """Not a W&B run file, or a corrupt one."""


_LOG_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_REC_HEADER = struct.Struct("<IHB")  # crc32, length, chunk type
_LOG_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path, tail_bytes: int | None = None) -> Iterator[bytes]:
    """The raw protobuf records of a run-<id>.wandb file (W&B's LevelDB-log style, CRC-checked).

    With `tail_bytes`, only the blocks covering the file's last `tail_bytes` are read (records that began
    earlier are skipped): a cheap look at the end of a large run file.
    """
    data = path.read_bytes() if tail_bytes is None else b""
    start = _LOG_HEADER.size
    if tail_bytes is not None:
        size = path.stat().st_size
        first_block = max(0, (size - tail_bytes) // _LOG_BLOCK)
        with path.open("rb") as fh:
            head = fh.read(_LOG_HEADER.size)
            fh.seek(first_block * _LOG_BLOCK)
            body = fh.read()
        # keep absolute offsets: pad the skipped prefix with a placeholder that is never parsed
        data = (
            head + b"\0" * (first_block * _LOG_BLOCK - len(head)) + body
            if first_block
            else head + body[len(head) :]
        )
        start = max(_LOG_HEADER.size, first_block * _LOG_BLOCK)
    if len(data) < _LOG_HEADER.size:
        raise WandbFileError(f"{path} is too short to be a W&B run file")
    ident, magic, _version = _LOG_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise WandbFileError(f"{path} is not a W&B run file (header {data[:7]!r})")
    crc = {t: zlib.crc32(bytes([t])) for t in (_FULL, _FIRST, _MIDDLE, _LAST)}
    offset, pending, in_record = start, b"", start == _LOG_HEADER.size
    while offset < len(data):
        left = _LOG_BLOCK - offset % _LOG_BLOCK
        if left < _REC_HEADER.size:
            offset += left
            continue
        checksum, length, kind = _REC_HEADER.unpack_from(data, offset)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            offset += left
            continue
        chunk = data[offset + _REC_HEADER.size : offset + _REC_HEADER.size + length]
        if kind not in crc or len(chunk) != length or zlib.crc32(chunk, crc[kind]) & 0xFFFFFFFF != checksum:
            if tail_bytes is not None and offset + _REC_HEADER.size + length > len(data):
                return  # a record still being written
            raise WandbFileError(f"{path}: corrupt or truncated record at byte {offset}")
        offset += _REC_HEADER.size + length
        if kind == _FULL:
            in_record = True
            yield chunk
        elif kind == _FIRST:
            in_record, pending = True, chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif in_record:  # _LAST of a record whose start we read
            yield pending + chunk
            pending = b""


def exit_record_written(path: Path) -> bool:
    """Whether W&B's writer has flushed the run's exit record (the last thing it writes) to `path`."""
    from wandb.proto import wandb_internal_pb2 as pb

    if not path.is_file() or path.stat().st_size < _LOG_HEADER.size:
        return False
    try:
        for raw in _wandb_records(path, tail_bytes=2 * _LOG_BLOCK):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "exit":
                return True
    except (WandbFileError, OSError, ValueError):
        return False
    return False


def wait_for_run_file(run_dir: str | Path, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """Wait until a finished run's exit record is on disk (W&B's writer flushes it just after finish returns)."""
    run_dir = Path(run_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        files = sorted(run_dir.glob("run-*.wandb"))
        if files and exit_record_written(files[0]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _apply_items(target: dict[str, Any], items: Iterable[Any], nest: bool = False) -> None:
    """Apply W&B key/nested_key + value_json items to a dict: flat ('/'-joined keys) or nested dicts."""
    for item in items:
        path = list(item.nested_key) if item.nested_key else [item.key]
        value = json.loads(item.value_json)
        if not nest:
            target["/".join(path)] = value
            continue
        node = target
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value


def read_wandb_run(run_dir: str | Path) -> OfflineRun:
    """Decode a run directory's `run-<id>.wandb` (after waiting for its exit record) into an `OfflineRun`.

    Tables are the JSON files wandb writes under files/media/table/.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    wait_for_run_file(run_dir)
    found = sorted(run_dir.glob("run-*.wandb"))
    if not found:
        raise WandbFileError(f"no run-*.wandb file in {run_dir}: not a W&B run directory")
    run_id = project = ""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code: int | None = None
    for raw in _wandb_records(found[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        which = record.WhichOneof("record_type")
        if which == "run":
            run_id, project = record.run.run_id, record.run.project
            _apply_items(config, record.run.config.update, nest=True)
        elif which == "config":
            _apply_items(config, record.config.update, nest=True)
        elif which == "history":
            row: dict[str, Any] = {}
            _apply_items(row, record.history.item)
            history.append(row)
        elif which == "summary":
            _apply_items(summary, record.summary.update)
            for item in record.summary.remove:
                summary.pop("/".join(item.nested_key) if item.nested_key else item.key, None)
        elif which == "exit":
            exit_code = int(record.exit.exit_code)
    tables: dict[str, list[dict[str, Any]]] = {}
    table_dir = run_dir / "files" / "media" / "table"
    logged: list[tuple[int, str, Path]] = []
    for path in table_dir.rglob("*.table.json"):
        # files/media/table/<key>_<step>_<hash>.table.json
        key, step, _hash = path.relative_to(table_dir).as_posix()[: -len(".table.json")].rsplit("_", 2)
        logged.append((int(step) if step.isdigit() else -1, key, path))
    for _step, key, path in sorted(logged, key=lambda t: t[0]):
        tables.setdefault(key, []).append(json.loads(path.read_text()))
    files_dir = run_dir / "files"
    files = sorted(p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file())
    return OfflineRun(run_dir, run_id, project, config, history, summary, exit_code, tables, files)


