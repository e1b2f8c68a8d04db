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
lost; an offline run directory can be uploaded later with `wandb sync <run_dir>`. Beside W&B's own files the
tracker keeps a plain JSON-lines copy of what it logged (`files/r1_plugin-log.jsonl`), which
`read_offline_run` reads back without an API key. `mode="disabled"`
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
import warnings
from collections.abc import Iterable, Mapping, Sequence
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
# The plain copy of everything a Tracker logs, under the run's files/ folder (read by `read_offline_run`).
PLAIN_LOG = "r1_plugin-log.jsonl"


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

    def __init__(
        self, run: Any | None, kind: str, mode: str, config: Mapping[str, Any] | None = None
    ) -> None:
        """Wrap a started wandb run (or None for a disabled, no-op tracker); use `start_run` to make one.

        `config` is what the run was started with, recorded in the plain copy (see `read_offline_run`).
        """
        self.run = run
        self.kind = kind
        self.mode = mode
        self.exit_code: int | None = None
        if run is not None:
            self._write(
                {"type": "start", "run_id": run.id, "project": run.project, "config": _plain(dict(config or {}))}
            )

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

    # --- the plain copy ------------------------------------------------------------------------------------
    @property
    def plain_log(self) -> Path | None:
        """The JSON-lines copy of everything logged (`<run_dir>/files/r1_plugin-log.jsonl`), or None if disabled.

        It sits in the run's files/ folder, so `wandb sync` uploads it with the run; `read_offline_run` reads it.
        """
        if self.run is None:
            return None
        return Path(self.run.dir) / PLAIN_LOG

    def _write(self, record: Mapping[str, Any]) -> None:
        """Append one record to the plain copy as one line (a reader skips a last line cut short by a kill)."""
        path = self.plain_log
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=str) + "\n"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line)

    def _log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """`run.log(values, step=step)`, copied to the plain log: tables as columns + rows, media as their names."""
        from wandb.plot import CustomChart

        assert self.run is not None
        current = int(self.run.step)
        self.run.log(dict(values), step=step)
        if step is not None and step < current:  # W&B drops rows for a step already passed (with a warning)
            return
        plain: dict[str, Any] = {}
        tables: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            if isinstance(value, CustomChart):  # W&B logs a chart as its data table, `<key>_table`
                key, value = f"{key}_table", value.table
            plain[key] = _plain_media(self.run, key, value, tables)
        record: dict[str, Any] = {"type": "log", "step": current if step is None else step, "values": plain}
        if tables:
            record["tables"] = tables
        self._write(record)

    # --- logging -----------------------------------------------------------------------------------------
    def log_config(self, config: Mapping[str, Any]) -> None:
        """Add (or update) config entries: model, SAE release/id, hook, feature, strength, gate, seed, ..."""
        if self.run is None:
            return
        self.run.config.update(_plain(dict(config)), allow_val_change=True)
        self._write({"type": "config", "config": _plain(dict(config))})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics to the history (W&B steps must not decrease; omit `step` to auto-increment)."""
        if self.run is None:
            return
        self._log(_plain(dict(metrics)), step=step)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set final/summary values of the run (shown in the runs table, not the history)."""
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = _plain(value)
        self._write({"type": "summary", "values": _plain(dict(values))})

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
        self._log({key: self._table(data, columns)}, step=step)

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
        self._log({key: image}, step=step)

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
        self._log({key: self._table(frame, None), f"{key}_chart": chart})

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
        self._log({key: table, f"{key}_html": wandb.Html(_activation_html(str_tokens, arr, feature_cols))})

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
        self._write({"type": "artifact", "name": name, "artifact_type": type, "path": str(path)})

    # --- lifecycle ---------------------------------------------------------------------------------------
    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (idempotent); non-zero marks it failed. The exit code is in the plain copy first."""
        if self.exit_code is not None:
            return
        self.exit_code = exit_code
        if self.run is not None:
            self._write({"type": "exit", "exit_code": exit_code})
            self.run.finish(exit_code=exit_code)

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
                error = f"{exc_type.__name__}: {exc}"
                self.run.summary["error"] = error
                self._write({"type": "summary", "values": {"error": error}})
            except Exception:  # never mask the user's exception with a logging failure
                logger.exception("could not record the error in the W&B summary")
        self.finish(code)

    def __repr__(self) -> str:
        """Kind, mode and run directory, for logs."""
        return f"Tracker(kind={self.kind!r}, mode={self.mode!r}, run_dir={self.run_dir})"


def _plain_media(run: Any, key: str, value: Any, tables: dict[str, dict[str, Any]]) -> Any:
    """The plain-copy form of one logged value: tables go into `tables`; images and HTML become W&B's reference."""
    import wandb

    if isinstance(value, wandb.Table):
        tables[key] = {"columns": list(value.columns), "data": [list(row) for row in value.data]}
        return {"_type": "table", "nrows": len(value.data), "ncols": len(value.columns)}
    if isinstance(value, (wandb.Image, wandb.Html)):  # bound to the run by `run.log`: its media file's name
        return value.to_json(run)
    return value


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
            return Tracker(run, kind, "online", full_config)
    run = wandb.init(mode="offline", settings=_settings("offline"), **init_kwargs)
    return Tracker(run, kind, "offline", full_config)


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
@dataclass
class OfflineRun:
    """What a Tracker's run directory holds: config, history rows, summary, exit code and logged tables.

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
    """Read what a Tracker logged back from its run directory: config, history, summary, exit code, tables.

    Reads the plain copy the Tracker writes beside W&B's own files (`files/r1_plugin-log.jsonl`), so it
    needs no API key, no network and no knowledge of W&B's private binary run file. Runs that r1_plugin's
    Tracker did not write (e.g. SAELens's training runs) have no such copy: open them with `wandb sync`.
    """
    run_dir = Path(run_dir)
    path = run_dir / "files" / PLAIN_LOG
    if not path.is_file():
        raise TrackingError(
            f"no files/{PLAIN_LOG} in {run_dir}: not a W&B run directory written by r1_plugin's Tracker "
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
]
