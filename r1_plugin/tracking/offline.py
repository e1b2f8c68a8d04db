"""Reading a run logger's offline run directory back (config, history, summary, tables) with no API key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1_plugin.tracking.mode import TrackingError
from r1_plugin.tracking.plain import PLAIN_LOG


@dataclass
class OfflineRun:
    """What a RunLogger's run directory holds: config, history rows, summary, exit code and logged tables.

    `config` is nested as logged; `history` rows and `summary` are flat, nested keys joined with '/'.
    """

    run_dir: Path
    run_id: str
    project: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int | None
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def table(self, key: str) -> dict[str, Any]:
        """The last table logged under `key` as {"columns": [...], "data": [[...], ...]}."""
        if key not in self.tables:
            raise KeyError(f"no table {key!r} in {self.run_dir} (tables: {sorted(self.tables)})")
        return self.tables[key][-1]

    def metric(self, key: str) -> list[Any]:
        """Every logged value of history key `key` (nested keys joined with '/'), in step order."""
        return [row[key] for row in self.history if key in row]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one flat dict with '/'-joined keys, as W&B shows history and summary."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Read what a RunLogger logged back from its run directory: config, history, summary, exit code, tables.

    Reads the plain copy the RunLogger writes beside W&B's own files (`files/r1_plugin-log.jsonl`), so it
    needs no API key, no network and no knowledge of W&B's private binary run file. Runs that r1_plugin's
    RunLogger did not write (e.g. SAELens's training runs) have no such copy: open them with `wandb sync`.
    """
    run_dir = Path(run_dir)
    path = run_dir / "files" / PLAIN_LOG
    if not path.is_file():
        raise TrackingError(
            f"no files/{PLAIN_LOG} in {run_dir}: not a W&B run directory written by r1_plugin's RunLogger "
            "(pass an offline-run-*/run-* folder; runs opened elsewhere can be read after `wandb sync`)"
        )
    run_id = project = ""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    exit_code: int | None = None
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a last line cut short by a killed process: everything before is kept
                break
            raise TrackingError(f"{path}: line {number} is not JSON ({exc})") from exc
        kind = record["type"]
        if kind == "start":
            run_id, project = record["run_id"], record["project"]
            config.update(record["config"])
        elif kind == "config":
            config.update(record["config"])
        elif kind == "log":
            values = _flatten(record["values"])
            if history and history[-1]["_step"] == record["step"]:  # same step: W&B merges into one row
                history[-1].update(values)
            else:
                history.append({"_step": record["step"], **values})
            summary.update(values)
            for key, table in record.get("tables", {}).items():
                tables.setdefault(key, []).append(table)
        elif kind == "summary":
            summary.update(_flatten(record["values"]))
        elif kind == "exit":
            exit_code = int(record["exit_code"])
    files_dir = run_dir / "files"
    files = sorted(p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file())
    return OfflineRun(run_dir, run_id, project, config, history, summary, exit_code, tables, files)
