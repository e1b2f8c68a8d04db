"""The plain JSON-lines copy a run logger keeps beside W&B's files: its name and how values become plain JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The plain copy of everything a RunLogger logs, under the run's files/ folder (read by `read_offline_run`).
PLAIN_LOG = "r1_plugin-log.jsonl"


def plain_value(value: Any) -> Any:
    """A JSON/W&B-friendly version of a value (tensors and numpy scalars/arrays become Python objects)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy array / scalar
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value


def union_columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Columns for a list of dict rows: `first` then every other key in order of first appearance."""
    columns = list(first)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(str(key))
    return columns
