"""`RunLogger`, one W&B run of an r1_plugin tool (config, metrics, tables, figures, plain copy), and `start_run`."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from r1_plugin.tracking.mode import (
    DEFAULT_PROJECT,
    ONLINE_INIT_TIMEOUT_S,
    TrackingError,
    package_versions,
    resolve_mode,
)
from r1_plugin.tracking.plain import PLAIN_LOG, plain_value, union_columns
from r1_plugin.tracking.render import activation_html, heatmap_figure

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

GENERATION_COLUMNS: tuple[str, ...] = ("prompt", "unsteered", "steered", "gate_position", "strength")
EXIT_CODE_EXCEPTION = 1
EXIT_CODE_INTERRUPT = 255


class RunLogger:
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
                {"type": "start", "run_id": run.id, "project": run.project, "config": plain_value(dict(config or {}))}
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
        self.run.config.update(plain_value(dict(config)), allow_val_change=True)
        self._write({"type": "config", "config": plain_value(dict(config))})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics to the history (W&B steps must not decrease; omit `step` to auto-increment)."""
        if self.run is None:
            return
        self._log(plain_value(dict(metrics)), step=step)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Set final/summary values of the run (shown in the runs table, not the history)."""
        if self.run is None:
            return
        for key, value in values.items():
            self.run.summary[key] = plain_value(value)
        self._write({"type": "summary", "values": plain_value(dict(values))})

    def _table(self, data: pd.DataFrame | Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> Any:
        """Build a wandb.Table from a DataFrame or a list of dict rows (missing cells become None)."""
        import wandb

        if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
            frame = data if columns is None else data[list(columns)]
            cols = [str(c) for c in frame.columns]
            rows = [[plain_value(v) for v in rec] for rec in frame.itertuples(index=False, name=None)]
            return wandb.Table(columns=cols, data=rows)
        if isinstance(data, Mapping):
            raise TrackingError("log_table wants a DataFrame or a list of dict rows, not a single dict")
        rows_in = list(data)
        for row in rows_in:
            if not isinstance(row, Mapping):
                raise TrackingError(f"log_table rows must be dicts, got {type(row).__name__}")
        cols = list(columns) if columns is not None else union_columns(rows_in)
        if not cols:
            raise TrackingError("log_table: no columns (empty rows and no `columns` given)")
        return wandb.Table(columns=cols, data=[[plain_value(row.get(c)) for c in cols] for row in rows_in])

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
        self.log_table(key, rows, columns=union_columns(rows, GENERATION_COLUMNS))

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
        fig = heatmap_figure(
            plain_value(values), xlabel=xlabel, ylabel=ylabel, title=title,
            xticklabels=xticklabels, yticklabels=yticklabels,
        )
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
        xs = [plain_value(v) for v in frame[x]]
        chart = wandb.plot.line_series(
            xs=xs,
            ys=[[plain_value(v) for v in frame[y]] for y in ys],
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

        arr = np.asarray(plain_value(acts), dtype=float)
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
        self._log({key: table, f"{key}_html": wandb.Html(activation_html(str_tokens, arr, feature_cols))})

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

    def __enter__(self) -> RunLogger:
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
            except (OSError, ValueError, TypeError, wandb_error()) as exc:  # never mask the user's exception
                logger.warning("could not record the error in the W&B summary or the plain copy: %s", exc)
        self.finish(code)

    def __repr__(self) -> str:
        """Kind, mode and run directory, for logs."""
        return f"RunLogger(kind={self.kind!r}, mode={self.mode!r}, run_dir={self.run_dir})"


def wandb_error() -> type[Exception]:
    """wandb's own exception base class (wandb is imported lazily, only when a run logs)."""
    import wandb

    return wandb.errors.Error


def _plain_media(run: Any, key: str, value: Any, tables: dict[str, dict[str, Any]]) -> Any:
    """The plain-copy form of one logged value: tables go into `tables`; images and HTML become W&B's reference."""
    import wandb

    if isinstance(value, wandb.Table):
        tables[key] = {"columns": list(value.columns), "data": [list(row) for row in value.data]}
        return {"_type": "table", "nrows": len(value.data), "ncols": len(value.columns)}
    if isinstance(value, (wandb.Image, wandb.Html)):  # bound to the run by `run.log`: its media file's name
        return value.to_json(run)
    return value


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
) -> RunLogger:
    """Start a tracked run of tool `kind` ("steer", "sweep", "sinks", "features", ...); use as a context manager.

    `config` is logged with `kind`, `seed` (argument, else config["seed"], else torch.initial_seed()) and
    `versions` (package versions) added. `mode` None follows WANDB_MODE, else online only with an API key.
    `dir` (else WANDB_DIR, else the cwd) holds the `wandb/` folder. `project` defaults to WANDB_PROJECT or
    "r1-plugin". Never prompts; an online start that fails falls back to offline.
    """
    resolved = resolve_mode(mode)
    full_config: dict[str, Any] = dict(plain_value(dict(config or {})))
    if seed is None:
        seed = full_config.get("seed")
    if seed is None:
        import torch

        seed = int(torch.initial_seed())
    full_config["seed"] = seed
    full_config["kind"] = kind
    full_config["versions"] = package_versions()
    if resolved == "disabled":
        return RunLogger(None, kind, "disabled")

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
        except (wandb.errors.Error, OSError, TimeoutError) as exc:  # no network, bad key, server down: keep it local
            warnings.warn(f"W&B online start failed ({exc}); logging offline instead", stacklevel=2)
            resolved = "offline"
        else:
            return RunLogger(run, kind, "online", full_config)
    run = wandb.init(mode="offline", settings=_settings("offline"), **init_kwargs)
    return RunLogger(run, kind, "offline", full_config)
