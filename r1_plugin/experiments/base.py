"""What every findings experiment shares: the result object (table, plot, markdown, W&B, files), the bootstrap
confidence interval over prompts, R1 prompt tokens, greedy generation and the feature read-out."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from r1_plugin.errors import R1PluginError
from r1_plugin.steering.spec import SteeringSpec, SteeringSpecError, keywords_given

DEFAULT_N_BOOT = 1000
DEFAULT_CI = 0.95


class ExperimentError(R1PluginError, ValueError):
    """An experiment cannot run as asked (bad prompts, no feature, a trace without `<think>`, ...)."""


# --- statistics ---------------------------------------------------------------------------------------------
def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = DEFAULT_N_BOOT, ci: float = DEFAULT_CI, seed: int = 0
) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean of the non-NaN values and its percentile-bootstrap CI (resampling prompts
    with replacement `n_boot` times, numpy `default_rng(seed)`); NaNs for no values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0])
    return float(x.mean()), float(low), float(high), int(x.size)


def summarize(
    table: pd.DataFrame, by: str | Sequence[str], metrics: Sequence[str], n_boot: int, seed: int, ci: float = DEFAULT_CI
) -> pd.DataFrame:
    """One row per (group, metric): mean over rows (prompts) with its bootstrap CI."""
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for group, frame in table.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        for metric in metrics:
            if metric not in frame:
                continue
            mean, low, high, n = bootstrap_ci(frame[metric].astype(float).to_numpy(), n_boot, ci, seed)
            rows.append({**dict(zip(keys, group)), "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                         "n": n})
    return pd.DataFrame(rows)


# --- text and tokens ----------------------------------------------------------------------------------------
def prompt_tokens(model: Any, prompt: str | torch.Tensor, chat: bool = True) -> torch.Tensor:
    """`[1, seq]` ids: a user message in R1's chat format (`chat`), R1 chat text as is, raw text, or ids as given
    (`r1_plugin.drive.Driver.prompt_tokens`)."""
    from r1_plugin.drive import ModelDriveError, driver

    try:
        return driver(model).prompt_tokens(prompt, chat)
    except ModelDriveError as exc:
        raise ExperimentError(str(exc)) from exc


def prompt_list(prompts: str | torch.Tensor | Sequence[str | torch.Tensor]) -> list[str | torch.Tensor]:
    """Prompts as a non-empty list."""
    out = [prompts] if isinstance(prompts, (str, torch.Tensor)) else list(prompts)
    if not out:
        raise ExperimentError("no prompts given")
    return out


def prompt_label(model: Any, prompt: str | torch.Tensor) -> str:
    """The prompt as text for tables."""
    if isinstance(prompt, str):
        return prompt
    ids = prompt if prompt.dim() == 1 else prompt[0]
    return str(model.tokenizer.decode(ids.tolist())) if model.tokenizer is not None else str(ids.tolist())


def eos_id(model: Any) -> int | None:
    """The tokenizer's EOS id, if any."""
    return getattr(getattr(model, "tokenizer", None), "eos_token_id", None)


def generate_greedy(model: Any, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy KV-cached generation of one sequence, stopping at EOS: prompt + continuation ids `[1, seq]`."""
    from r1_plugin.drive import driver

    return driver(model).generate_greedy(tokens, max_new_tokens)


def trace(model: Any, tokens: torch.Tensor, max_new_tokens: int, generate: bool = True) -> torch.Tensor:
    """The sequence to analyse: `tokens` as given (a finished trace), or its greedy continuation cut after the
    first generated EOS (what follows it is padding from generate)."""
    from r1_plugin.drive import driver

    return driver(model).trace(tokens, max_new_tokens) if generate else tokens


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token of two id lists (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token-id lists (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    y = np.asarray(b)
    prev = np.arange(len(b) + 1)
    for i, token in enumerate(a, start=1):
        sub = prev[:-1] + (y != token)
        cur = np.empty_like(prev)
        cur[0] = i
        # deletions/substitutions are vectorised; insertions chain left to right (a cumulative minimum)
        cur[1:] = np.minimum(prev[1:] + 1, sub)
        cur = np.minimum.accumulate(cur - np.arange(len(cur))) + np.arange(len(cur))
        prev = cur
    return int(prev[-1])


def count_rate(text: str, target: str, n_tokens: int) -> float:
    """Occurrences of `target` in `text` (non-overlapping) per generated token; NaN without tokens."""
    return text.count(target) / n_tokens if n_tokens > 0 else math.nan


def repeated_ngram_rate(ids: Sequence[int], n: int = 3) -> float:
    """Fraction of the token n-grams that already occurred earlier in the same sequence; NaN if none."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return math.nan
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


# --- what is steered and read out ---------------------------------------------------------------------------
def steering_spec(steering: SteeringSpec | None = None, **keywords: Any) -> SteeringSpec:
    """The experiment's one `SteeringSpec`: `steering` as given, or built (and validated) from the seven steering
    keywords of `steer` (sae, feature, direction, hook_name, mode, normalize, relative); both is an error."""
    given = keywords_given(**keywords)
    if steering is not None:
        if given:
            raise ExperimentError(f"give the steering as `steering=SteeringSpec(...)` or as keywords, not both "
                                  f"({', '.join(given)})")
        return steering
    try:
        return SteeringSpec(**keywords)
    except SteeringSpecError as exc:
        raise ExperimentError(str(exc)) from exc


class FeatureReadout:
    """The feature's expression per position, read from an *unsteered* forward: the SAE activation of the
    feature(s) (summed for several) at the SAE's hook, or without an SAE the projection on the unit direction."""

    def __init__(self, model: Any, spec: SteeringSpec) -> None:
        from r1_plugin.steering import sae_hook_name
        from r1_plugin.steering.steer import resolve_hook_name

        self.model = model
        self.sae = spec.sae
        self.feature = spec.feature
        hook = sae_hook_name(spec.sae) if spec.sae is not None else spec.hook_name
        assert hook is not None
        self.hook_name = resolve_hook_name(model, hook)
        self.unit: torch.Tensor | None = None
        if self.sae is None:
            vec = torch.as_tensor(spec.direction).detach().float()
            self.unit = vec / vec.norm()

    def from_activations(self, act: torch.Tensor) -> torch.Tensor:
        """`[batch, seq]` float32 expression from the hook's activations `[batch, seq, ...]`."""
        from r1_plugin.steering import encode_features

        if self.sae is not None:
            return encode_features(self.sae, act, self.feature).sum(-1).float().cpu()
        assert self.unit is not None
        flat = act.reshape(*act.shape[:2], -1)
        return (flat @ self.unit.to(flat.device, flat.dtype)).float().cpu()

    def __call__(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`[batch, seq]` expression, `[batch, seq, d_vocab]` log-probs) of an unsteered forward over `seqs`."""
        with torch.no_grad():
            logits, cache = self.model.run_with_cache(seqs, names_filter=[self.hook_name])
        return self.from_activations(cache[self.hook_name]), logits.float().log_softmax(-1).cpu()


def token_logprobs(logprobs: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
    """`[seq - 1]` log p(token t | tokens < t) of one row, from `[seq, vocab]` log-probs."""
    return logprobs[:-1].gather(-1, seq[1:].unsqueeze(-1).to(logprobs.device)).squeeze(-1)


def target_ids(model: Any, target_tokens: str | Sequence[int] | None) -> list[int] | None:
    """Token ids of the target tokens: ids as given, or the tokens of a text (each counts as an alternative)."""
    if target_tokens is None:
        return None
    if isinstance(target_tokens, str):
        ids = model.tokenizer(target_tokens, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(t) for t in target_tokens]
    if not ids:
        raise ExperimentError(f"target tokens {target_tokens!r} encode to no token")
    bad = [i for i in ids if not 0 <= i < model.cfg.d_vocab]
    if bad:
        raise ExperimentError(f"target token ids {bad} are outside the vocabulary (d_vocab {model.cfg.d_vocab})")
    return ids


def target_logprob(logprobs: torch.Tensor, ids: Sequence[int], start: int, stop: int) -> float:
    """Mean over positions start..stop-1 of log P(next token is one of `ids`) (logsumexp over the ids)."""
    if stop <= start:
        return math.nan
    return float(logprobs[start:stop, list(ids)].logsumexp(-1).mean())


# --- the result object --------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (np.floating,)):
        return _cell(float(value))
    text = str(value).replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= 60 else text[:57] + "..."


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int = 60) -> str:
    """A GitHub markdown table of a DataFrame (numbers to 4 significant digits, long text cut)."""
    cols = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    if frame.empty or not cols:
        return "(empty)"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in frame[cols].head(max_rows).itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v) for v in rec) + " |")
    if len(frame) > max_rows:
        lines.append(f"\n({len(frame) - max_rows} more rows in results.json)")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return repr(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_jsonable(r) for r in frame.to_dict("records")]


@dataclass
class ExperimentResult:
    """One experiment's evidence: `table` (per prompt / per item rows), `summary` (aggregates with bootstrap CIs),
    extra `tables`, the `config` it ran with and `notes` on how to read it. `plot()` draws it (a matplotlib
    `Figure`, no pyplot state), `to_markdown()` writes the report, `log(tracker)` sends it to W&B, `save(out)`
    writes report.md, results.json and the PNG."""

    name: str
    table: pd.DataFrame
    summary: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    draw: Callable[[ExperimentResult, Any], None] | None = None
    table_columns: list[str] | None = None  # the columns shown in the markdown report (all in results.json)
    arrays: dict[str, Any] = field(default_factory=dict)  # full arrays behind the tables (not in results.json)
    summary_title: str = "Summary (mean over prompts, bootstrap CI)"
    summary_value: str = "mean"  # the summary column logged as the run summary

    def plot(self) -> Any:
        """A `matplotlib.figure.Figure` of the result."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4.2), layout="constrained")
        if self.draw is None:
            raise ExperimentError(f"{self.name}: no plot defined")
        self.draw(self, fig)
        return fig

    def to_markdown(self) -> str:
        """The report: what ran, the aggregates, the extra tables and the per-prompt table."""
        lines = [f"# {self.name}", ""]
        lines += [f"- {k}: `{_cell(v)}`" for k, v in self.config.items() if not isinstance(v, (list, dict))]
        lines += ["", f"## {self.summary_title}", "", markdown_table(self.summary)]
        for key, frame in self.tables.items():
            lines += ["", f"## {key}", "", markdown_table(frame)]
        lines += ["", "## Per prompt", "", markdown_table(self.table, self.table_columns)]
        if self.notes:
            lines += ["", "## How to read this", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able data (NaN becomes null)."""
        return {
            "name": self.name,
            "config": _jsonable(self.config),
            "summary": _records(self.summary),
            "tables": {k: _records(v) for k, v in self.tables.items()},
            "table": _records(self.table),
            "notes": list(self.notes),
        }

    def log(self, tracker: Any) -> None:
        """Log config, tables, the figure and the summary means through an r1_plugin `Tracker`."""
        key = self.name
        tracker.log_config({key: _jsonable(self.config)})
        tracker.log_table(f"{key}/table", self.table)
        if not self.summary.empty:
            tracker.log_table(f"{key}/summary", self.summary)
        for name, frame in self.tables.items():
            if not frame.empty:
                tracker.log_table(f"{key}/{name}", frame)
        tracker.log_figure(f"{key}/plot", self.plot())
        tracker.log_summary(self.summary_values())

    def summary_values(self) -> dict[str, float]:
        """Flat `<experiment>/<group...>` -> the summary value (and _ci_low/_ci_high when there) for W&B."""
        out: dict[str, float] = {}
        value = self.summary_value
        skip = {value, "ci_low", "ci_high", "n"}
        group_cols = [c for c in self.summary.columns if c not in skip]
        for rec in self.summary.to_dict("records"):
            name = "/".join([self.name, *[str(rec[c]) for c in group_cols]])
            out[name] = rec[value]
            for extra in ("ci_low", "ci_high"):
                if extra in rec:
                    out[f"{name}_{extra}"] = rec[extra]
        return out

    def save(self, out: str | Path, prefix: str = "") -> dict[str, Path]:
        """Write `<prefix>report.md`, `<prefix>results.json` and `<prefix><name>.png` into `out`."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "report": folder / f"{prefix}report.md",
            "results": folder / f"{prefix}results.json",
            "plot": folder / f"{prefix}{self.name}.png",
        }
        files["report"].write_text(self.to_markdown(), encoding="utf-8")
        files["results"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        self.plot().savefig(files["plot"], dpi=90)
        return files
