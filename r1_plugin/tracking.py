"""W&B experiment tracking for r1_plugin's tools: one small, offline-first API.

Every tool (steering, sweeps, sinks, features) logs through a `Tracker`:

    from r1_plugin.tracking import start_run

    with start_run("steer", {"model": name, "hook": hook, "feature": 123, "strength": 8.0}) as tr:
        tr.log_generations(rows)            # wandb.Table: prompt, unsteered, steered, gate_position, strength, ...
        tr.log_curve("sweep", df, x="strength", ys=["kl", "on_topic"])
        tr.log_figure("sink_heatmap", fig)  # matplotlib figure or PNG path -> wandb.Image

Offline first: an explicit `mode`, else `WANDB_MODE`, else "online" only when an API key is configured
(WANDB_API_KEY or a netrc entry), otherwise "offline". It never prompts for a login, and if an online
start fails (no network) it falls back to offline. The run is always finished when the `with` block
exits, also on an exception (exit code 1, marked failed) or Ctrl-C (exit code 255), so nothing logged is
lost; an offline run directory can be uploaded later with `wandb sync <run_dir>`. `mode="disabled"`
(or `--no-wandb`) gives a no-op tracker that never imports wandb.
"""

from __future__ import annotations

import argparse
import html
import importlib.metadata
import io
import json
import logging
import netrc
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from r1_plugin.errors import R1PluginError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "r1-plugin"
MODES: tuple[str, ...] = ("offline", "online", "disabled")
GENERATION_COLUMNS: tuple[str, ...] = ("prompt", "unsteered", "steered", "gate_position", "strength")
VERSIONED_PACKAGES: tuple[str, ...] = (
    "r1-plugin",
    "torch",
    "transformer-lens",
    "sae-lens",
    "transformers",
    "wandb",
)
EXIT_CODE_EXCEPTION = 1
EXIT_CODE_INTERRUPT = 255
# Seconds an online start may take before it is abandoned (then the run falls back to offline).
ONLINE_INIT_TIMEOUT_S = 30.0
# Seconds `finish` waits for W&B's writer to flush the run file's exit record.
FLUSH_TIMEOUT_S = 10.0


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


def _plain(value: Any) -> Any:
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
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _union_columns(rows: Sequence[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Columns for a list of dict rows: `first` then every other key in order of first appearance."""
    columns = list(first)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(str(key))
    return columns


class Tracker:
    """One experiment run: logs config, metrics, tables, figures to W&B (or nothing when disabled)."""

    def __init__(self, run: Any | None, kind: str, mode: str) -> None:
        """Wrap a started wandb run (or None for a disabled, no-op tracker); use `start_run` to make one."""
        self.run = run
        self.kind = kind
        self.mode = mode
        self.exit_code: int | None = None

    # --- state -------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Whether anything is being logged (False for mode='disabled')."""
        return self.run is not None

    @property
    def finished(self) -> bool:
        """Whether `finish` has run."""
        return self.exit_code is not None

    @property
    def run_dir(self) -> Path | None:
        """The local run directory (e.g. .../wandb/offline-run-<time>-<id>), the argument to `wandb sync`."""
        if self.run is None:
            return None
        return Path(self.run.settings.sync_dir)

    @property
    def url(self) -> str | None:
        """The run's web page when online, else None."""
        return None if self.run is None else getattr(self.run, "url", None)

    # --- logging -----------------------------------------------------------------------------------------
    def log_config(self, config: Mapping[str, Any]) -> None:
        """Add (or update) config entries: model, SAE release/id, hook, feature, strength, gate, seed, ..."""
        if self.run is None:
            return
        self.run.config.update(_plain(dict(config)), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics to the history (W&B steps must not decrease; omit `step` to auto-increment)."""
        if self.run is None:
            return
        self.run.log(_plain(dict(metrics)), step=step)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set final/summary values of the run (shown in the runs table, not the history)."""
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = _plain(value)

    def _table(self, data: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> Any:
        """Build a wandb.Table from a DataFrame or a list of dict rows (missing cells become None)."""
        import wandb

        if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
            frame = data if columns is None else data[list(columns)]
            cols = [str(c) for c in frame.columns]
            rows = [[_plain(v) for v in rec] for rec in frame.itertuples(index=False, name=None)]
            return wandb.Table(columns=cols, data=rows)
        if isinstance(data, Mapping):
            raise TrackingError("log_table wants a DataFrame or a list of dict rows, not a single dict")
        rows_in = list(data)
        for row in rows_in:
            if not isinstance(row, Mapping):
                raise TrackingError(f"log_table rows must be dicts, got {type(row).__name__}")
        cols = list(columns) if columns is not None else _union_columns(rows_in)
        if not cols:
            raise TrackingError("log_table: no columns (empty rows and no `columns` given)")
        return wandb.Table(columns=cols, data=[[_plain(row.get(c)) for c in cols] for row in rows_in])

    def log_table(
        self,
        key: str,
        data: pd.DataFrame | Sequence[Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        step: int | None = None,
    ) -> None:
        """Log a DataFrame or list of dict rows as a wandb.Table under `key` (`columns` selects/orders them)."""
        if self.run is None:
            return
        self.run.log({key: self._table(data, columns)}, step=step)

    def log_generations(self, rows: Sequence[Mapping[str, Any]], key: str = "generations") -> None:
        """Log generations as a table: prompt, unsteered, steered, gate_position, strength, then any extra keys."""
        if self.run is None:
            return
        rows = list(rows)
        for i, row in enumerate(rows):
            if "prompt" not in row:
                raise TrackingError(f"log_generations: row {i} has no 'prompt' (keys: {sorted(row)})")
        self.log_table(key, rows, columns=_union_columns(rows, GENERATION_COLUMNS))

    def log_figure(self, key: str, figure: Any, caption: str | None = None, step: int | None = None) -> None:
        """Log a matplotlib figure or an image file (PNG path) as a wandb.Image, e.g. a sink heatmap."""
        if self.run is None:
            return
        import wandb

        if isinstance(figure, (str, Path)):
            path = Path(figure)
            if not path.is_file():
                raise TrackingError(f"log_figure: no image file at {path}")
            image = wandb.Image(str(path), caption=caption)
        elif hasattr(figure, "savefig"):
            from PIL import Image

            buf = io.BytesIO()
            figure.savefig(buf, format="png", bbox_inches="tight")
            buf.seek(0)
            with Image.open(buf) as img:
                image = wandb.Image(img.convert("RGBA"), caption=caption)
        else:
            raise TrackingError(
                f"log_figure wants a matplotlib figure or a PNG path, got {type(figure).__name__}"
            )
        self.run.log({key: image}, step=step)

    def log_heatmap(
        self,
        key: str,
        values: Any,
        *,
        xlabel: str = "",
        ylabel: str = "",
        title: str | None = None,
        xticklabels: Sequence[str] | None = None,
        yticklabels: Sequence[str] | None = None,
    ) -> None:
        """Draw a 2-D array (e.g. sink rate per layer x head) as a heatmap and log it as an image."""
        if self.run is None:
            return
        import numpy as np
        from matplotlib.figure import Figure  # the object API: no pyplot state, the user's backend untouched

        arr = np.asarray(_plain(values), dtype=float)
        if arr.ndim != 2:
            raise TrackingError(f"log_heatmap wants a 2-D array, got shape {arr.shape}")
        fig = Figure(figsize=(max(4.0, 0.35 * arr.shape[1] + 2), max(3.0, 0.3 * arr.shape[0] + 1.5)))
        ax = fig.subplots()
        im = ax.imshow(arr, aspect="auto", cmap="viridis")
        fig.colorbar(im, ax=ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)), list(xticklabels), rotation=90)
        if yticklabels is not None:
            ax.set_yticks(range(len(yticklabels)), list(yticklabels))
        self.log_figure(key, fig, caption=title)

    def log_curve(
        self, key: str, df: pd.DataFrame, x: str, ys: Sequence[str] | str, title: str | None = None
    ) -> None:
        """Log a sweep curve: the table `key` (x and ys columns) and a line chart `<key>_chart` of ys against x."""
        if self.run is None:
            return
        import wandb

        ys = [ys] if isinstance(ys, str) else list(ys)
        missing = [c for c in [x, *ys] if c not in df.columns]
        if missing:
            raise TrackingError(f"log_curve: columns {missing} not in the DataFrame (has {list(df.columns)})")
        frame = df[[x, *ys]].sort_values(x)
        xs = [_plain(v) for v in frame[x]]
        chart = wandb.plot.line_series(
            xs=xs,
            ys=[[_plain(v) for v in frame[y]] for y in ys],
            keys=ys,
            title=title or key,
            xname=x,
        )
        self.run.log({key: self._table(frame, None), f"{key}_chart": chart})

    def log_feature_activations(
        self,
        key: str,
        str_tokens: Sequence[str],
        acts: Any,
        feature_ids: Sequence[int | str] | None = None,
    ) -> None:
        """Log per-token feature activations: a table (position, token, one column per feature) and HTML view.

        `acts` is [pos] for one feature or [pos, n_features]; `feature_ids` names the columns (default 0..n-1).
        """
        if self.run is None:
            return
        import numpy as np
        import wandb

        arr = np.asarray(_plain(acts), dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != len(str_tokens):
            raise TrackingError(
                f"log_feature_activations: acts must be [pos] or [pos, n_features] with pos={len(str_tokens)} "
                f"(one per token), got shape {tuple(arr.shape)}"
            )
        ids = list(feature_ids) if feature_ids is not None else list(range(arr.shape[1]))
        if len(ids) != arr.shape[1]:
            raise TrackingError(
                f"log_feature_activations: {len(ids)} feature_ids for {arr.shape[1]} features"
            )
        feature_cols = [f"feature_{f}" for f in ids]
        rows = [[pos, str(tok), *map(float, arr[pos])] for pos, tok in enumerate(str_tokens)]
        table = wandb.Table(columns=["position", "token", *feature_cols], data=rows)
        self.run.log({key: table, f"{key}_html": wandb.Html(_activation_html(str_tokens, arr, feature_cols))})

    def log_artifact_file(self, path: str | Path, name: str, type: str = "result") -> None:
        """Save a result file (e.g. a feature DB or CSV) with the run as a W&B artifact."""
        if self.run is None:
            return
        import wandb

        path = Path(path)
        if not path.exists():
            raise TrackingError(f"log_artifact_file: {path} does not exist")
        artifact = wandb.Artifact(name=name, type=type)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (idempotent), non-zero marks it failed; offline, returns once the run file is complete."""
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        if self.run is not None:
            run_dir = self.run_dir
            self.run.finish(exit_code=exit_code)
            if run_dir is not None and self.mode == "offline":
                wait_for_run_file(run_dir)

    def __enter__(self) -> Tracker:
        """Use as `with start_run(...) as tracker:`; the run is finished on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Finish the run: exit code 0, 1 on an exception (recorded in the summary), 255 on Ctrl-C."""
        if exc_type is None:
            self.finish(0)
            return
        code = EXIT_CODE_INTERRUPT if issubclass(exc_type, KeyboardInterrupt) else EXIT_CODE_EXCEPTION
        if self.run is not None and not self.finished:
            try:
                self.run.summary["error"] = f"{exc_type.__name__}: {exc}"
            except Exception:  # never mask the user's exception with a logging failure
                logger.exception("could not record the error in the W&B summary")
        self.finish(code)

    def __repr__(self) -> str:
        """Kind, mode and run directory, for logs."""
        return f"Tracker(kind={self.kind!r}, mode={self.mode!r}, run_dir={self.run_dir})"


def _activation_html(str_tokens: Sequence[str], arr: Any, feature_cols: Sequence[str]) -> str:
    """Tokens shaded by activation (one line per feature), a quick look without a notebook."""
    lines = []
    for j, col in enumerate(feature_cols):
        column = arr[:, j]
        top = float(max(column.max(), 1e-12)) if column.size else 1.0
        spans = []
        for tok, val in zip(str_tokens, column):
            alpha = max(0.0, min(1.0, float(val) / top))
            spans.append(
                f'<span title="{float(val):.4g}" style="background: rgba(255,120,0,{alpha:.3f})">'
                f"{html.escape(str(tok))}</span>"
            )
        lines.append(f"<div><b>{html.escape(col)}</b> (max {top:.4g}): {''.join(spans)}</div>")
    return "<div style='font-family: monospace; white-space: pre-wrap'>" + "".join(lines) + "</div>"


def start_run(
    kind: str,
    config: Mapping[str, Any] | None = None,
    *,
    project: str | None = None,
    mode: str | None = None,
    dir: str | Path | None = None,
    name: str | None = None,
    tags: Iterable[str] | None = None,
    seed: int | None = None,
    entity: str | None = None,
    group: str | None = None,
) -> Tracker:
    """Start a tracked run of tool `kind` ("steer", "sweep", "sinks", "features", ...); use as a context manager.

    `config` is logged with `kind`, `seed` (argument, else config["seed"], else torch.initial_seed()) and
    `versions` (package versions) added. `mode` None follows WANDB_MODE, else online only with an API key.
    `dir` (else WANDB_DIR, else the cwd) holds the `wandb/` folder. `project` defaults to WANDB_PROJECT or
    "r1-plugin". Never prompts; an online start that fails falls back to offline.
    """
    resolved = resolve_mode(mode)
    full_config: dict[str, Any] = dict(_plain(dict(config or {})))
    if seed is None:
        seed = full_config.get("seed")
    if seed is None:
        import torch

        seed = int(torch.initial_seed())
    full_config["seed"] = seed
    full_config["kind"] = kind
    full_config["versions"] = package_versions()
    if resolved == "disabled":
        return Tracker(None, kind, "disabled")

    import wandb

    run_dir = (
        Path(dir)
        if dir is not None
        else (Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else None)
    )
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    init_kwargs: dict[str, Any] = dict(
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=entity,
        dir=str(run_dir) if run_dir is not None else None,
        name=name,
        tags=sorted({kind, *(tags or ())}),
        config=full_config,
        job_type=kind,
        group=group,
        reinit="create_new",
    )

    def _settings(m: str) -> Any:
        return wandb.Settings(
            mode=m,
            silent=True,
            console="off",
            init_timeout=ONLINE_INIT_TIMEOUT_S,
            x_disable_stats=True,
        )

    if resolved == "online":
        try:
            run = wandb.init(mode="online", settings=_settings("online"), **init_kwargs)
        except Exception as exc:  # no network, bad key, server down: keep the results locally
            warnings.warn(f"W&B online start failed ({exc}); logging offline instead", stacklevel=2)
            resolved = "offline"
        else:
            return Tracker(run, kind, "online")
    run = wandb.init(mode="offline", settings=_settings("offline"), **init_kwargs)
    return Tracker(run, kind, "offline")


def add_tracking_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the W&B flags every r1-plugin command shares (--wandb-project/-mode/-dir/-name, --no-wandb)."""
    group = parser.add_argument_group("W&B tracking")
    group.add_argument(
        "--wandb-project", default=None, help=f"W&B project (default: $WANDB_PROJECT or {DEFAULT_PROJECT})"
    )
    group.add_argument(
        "--wandb-mode",
        choices=MODES,
        default=None,
        help="offline (default without an API key; `wandb sync` later), online, or disabled (default: $WANDB_MODE)",
    )
    group.add_argument(
        "--wandb-dir", default=None, help="folder for the wandb/ run directories (default: $WANDB_DIR or .)"
    )
    group.add_argument("--wandb-name", default=None, help="run name (default: W&B picks one)")
    group.add_argument("--wandb-tags", nargs="*", default=None, help="extra run tags")
    group.add_argument(
        "--no-wandb", action="store_true", help="do not log to W&B at all (same as --wandb-mode disabled)"
    )
    return parser


def tracker_from_args(
    args: argparse.Namespace, kind: str, config: Mapping[str, Any] | None = None
) -> Tracker:
    """Start a run from the flags of `add_tracking_args` (missing attributes count as not given)."""
    mode = "disabled" if getattr(args, "no_wandb", False) else getattr(args, "wandb_mode", None)
    return start_run(
        kind,
        config,
        project=getattr(args, "wandb_project", None),
        mode=mode,
        dir=getattr(args, "wandb_dir", None),
        name=getattr(args, "wandb_name", None),
        tags=getattr(args, "wandb_tags", None),
        seed=getattr(args, "seed", None),
    )


# --- reading an offline run back (no API key needed) ----------------------------------------------------------
_LOG_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
_REC_HEADER = struct.Struct("<IHB")  # crc32, length, chunk type
_LOG_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What a local W&B run directory holds: config, history rows, summary, exit code and logged tables.

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
        raise TrackingError(f"{path} is too short to be a W&B run file")
    ident, magic, _version = _LOG_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise TrackingError(f"{path} is not a W&B run file (header {data[:7]!r})")
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
            raise TrackingError(f"{path}: corrupt or truncated record at byte {offset}")
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


def _exit_record_written(path: Path) -> bool:
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
    except (TrackingError, OSError, ValueError):
        return False
    return False


def wait_for_run_file(run_dir: str | Path, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """Wait until a finished run's exit record is on disk (W&B's writer flushes it just after finish returns)."""
    run_dir = Path(run_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        files = sorted(run_dir.glob("run-*.wandb"))
        if files and _exit_record_written(files[0]):
            return True
        if time.monotonic() >= deadline:
            logger.warning("W&B run file in %s has no exit record after %.1f s", run_dir, timeout_s)
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


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Read a local run directory (offline or online) back: config, history, summary, exit code, tables.

    W&B 0.31 writes config, history and summary only into `run-<id>.wandb` in offline mode (no
    config.yaml / wandb-summary.json until synced), so this decodes that file; tables are the JSON files
    under files/media/table/. Useful to check a run before `wandb sync`, without an API key.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    found = sorted(run_dir.glob("run-*.wandb"))
    if not found:
        raise TrackingError(f"no run-*.wandb file in {run_dir}: not a W&B run directory")
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


__all__ = [
    "DEFAULT_PROJECT",
    "GENERATION_COLUMNS",
    "MODES",
    "OfflineRun",
    "Tracker",
    "TrackingError",
    "add_tracking_args",
    "package_versions",
    "read_offline_run",
    "resolve_mode",
    "start_run",
    "tracker_from_args",
    "wait_for_run_file",
]
