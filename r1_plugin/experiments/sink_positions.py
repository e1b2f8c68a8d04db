"""Goodfire's second R1 claim as an experiment: attention sinks sit at the end of the response prefix, not only at
the start of the sequence.

Each prompt is continued greedily by the model (or a finished trace is used as is) and scanned once with
`r1_plugin.sinks.scan_sinks`. Three positions per trace are compared:

- bos: position 0 when it holds the tokenizer's BOS;
- prefix_end: the token that ends the response prefix (`response_prefix_end`, `complete=True`);
- thinking_start: the matched control, the first token of the thinking after the prefix (prefix_end + 1).

At each: sink_rate (share of (layer, head) pairs whose alpha, the mean attention the key receives from the
queries at or after it, exceeds epsilon; Gu et al.), is_sink (the detector's verdict: sink_rate >= min_sink_rate
with >= min_queries queries), alpha_mean (over layers and heads), n_massive (massive activations at the
position: |value| > min_value and >= min_ratio x the layer's median |activation|; Sun et al.) and
norm_ratio_max (max over layers of the residual norm over the layer's median norm). `summary` gives each mean
with a bootstrap CI over prompts, plus the paired difference prefix_end - thinking_start; `tables["layers"]`
the per-layer profile (share of heads with alpha > epsilon, and the norm ratio).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from r1_plugin.experiments.base import (
    DEFAULT_N_BOOT,
    ExperimentError,
    ExperimentResult,
    bootstrap_ci,
    prompt_label,
    prompt_list,
    prompt_tokens,
    summarize,
    trace,
)
from r1_plugin.response_prefix import ResponsePrefixSpec, find_think_start, response_prefix_end

if TYPE_CHECKING:
    from r1_plugin.sinks.thresholds import SinkThresholds

NAME = "sinks"
ROLES = ("bos", "prefix_end", "thinking_start")
METRICS = ("sink_rate", "is_sink", "alpha_mean", "n_massive", "norm_ratio_max")
CONTROL = "thinking_start"
# The thresholds recorded in the result's config (chunk_size changes no number, so it is left out).
CONFIG_THRESHOLDS = ("epsilon", "min_sink_rate", "min_queries", "min_value", "min_ratio")
NOTES = (
    "sink_rate: share of (layer, head) pairs with alpha > epsilon at the position (Gu et al.); is_sink: the "
    "detector's verdict (sink_rate >= min_sink_rate and >= min_queries queries after the position).",
    "n_massive: activations with |value| > min_value and >= min_ratio x the layer median (Sun et al.); "
    "norm_ratio_max: max over layers of the position's residual norm / the layer's median norm.",
    "Goodfire's claim predicts prefix_end close to bos and clearly above the control thinking_start "
    "(a positive paired difference whose CI excludes 0).",
)


def role_positions(model: Any, seq: torch.Tensor, spec: ResponsePrefixSpec) -> dict[str, int | None]:
    """The three compared positions of one trace `[seq]` (None where a trace has none)."""
    str_tokens = list(model.to_str_tokens(seq))
    if find_think_start(str_tokens, spec.think_token) is None:
        raise ExperimentError(f"no {spec.think_token!r} token in the trace: the sinks experiment needs R1 chat text")
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    end = response_prefix_end(model, seq, spec, complete=True)
    return {
        "bos": 0 if bos_id is not None and int(seq[0]) == bos_id else None,
        "prefix_end": end,
        "thinking_start": end + 1 if end is not None and end + 1 < len(str_tokens) else None,
    }


def sink_check(
    model: Any,
    prompts: str | torch.Tensor | Sequence[str | torch.Tensor],
    *,
    max_new_tokens: int = 96,
    generate: bool = True,
    chat: bool = True,
    spec: ResponsePrefixSpec | None = None,
    thresholds: SinkThresholds | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    tracker: Any = None,
    **deprecated: Any,
) -> ExperimentResult:
    """Sink rate and massive-activation statistics at BOS, the response-prefix end and the first thinking token
    over the traces of `prompts`, with bootstrap CIs over prompts and the per-layer profile.

    prompts: user messages (R1 chat format when `chat`), R1 chat text or `[1, seq]` ids; continued greedily for up
    to `max_new_tokens` when `generate`, else used as finished traces. `thresholds`: a `r1_plugin.sinks.SinkThresholds`
    (default `SinkThresholds()`); the old keywords (`epsilon=`, `min_sink_rate=`, ...) still work for one release,
    with a DeprecationWarning.
    """
    from r1_plugin.sinks.thresholds import resolve_thresholds

    th = resolve_thresholds(thresholds, deprecated, "sink_check")
    spec = spec or ResponsePrefixSpec()
    if model.tokenizer is None:
        raise ExperimentError("the sinks experiment finds the response prefix from token strings: set a tokenizer")
    rows: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    layers: list[int] = []
    for p_idx, prompt in enumerate(prompt_list(prompts)):
        seq = trace(model, prompt_tokens(model, prompt, chat), max_new_tokens, generate)
        layers = _trace_rows(model, seq, p_idx, prompt_label(model, prompt), spec, th, rows, layer_rows)
    table = pd.DataFrame(rows)
    summary = pd.concat([summarize(table, "role", METRICS, n_boot, seed), _paired(table, n_boot, seed)],
                        ignore_index=True)
    per_layer = pd.DataFrame(layer_rows)
    profile = (summarize(per_layer, ["role", "layer"], ["sink_rate", "norm_ratio"], n_boot, seed)
               if len(per_layer) else pd.DataFrame())
    config = dict(experiment=NAME, generate=generate, max_new_tokens=max_new_tokens,
                  n_prompts=int(table["prompt_index"].nunique()), n_layers=len(layers), prefix_end=spec.end,
                  prefix_max_tokens=spec.max_tokens, **{k: getattr(th, k) for k in CONFIG_THRESHOLDS})
    result = ExperimentResult(
        name=NAME, table=table, summary=summary, config=config, notes=list(NOTES), draw=_draw,
        tables={"layers": profile}, arrays={"layers": layers},
        table_columns=["prompt_index", "role", "position", "token", "n_queries", *METRICS],
    )
    if tracker is not None:
        result.log(tracker)
    return result


def _trace_rows(model: Any, seq: torch.Tensor, p_idx: int, label: str, spec: ResponsePrefixSpec,
                th: SinkThresholds, rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]]) -> list[int]:
    """Scan one trace `[1, seq]` once and append its per-role rows and per-layer rows; returns the scanned layers."""
    from r1_plugin.sinks import scan_sinks

    positions = role_positions(model, seq[0], spec)
    scan = scan_sinks(model, seq, batched=False, thresholds=th)
    report, massive = scan.sinks, scan.massive
    assert report is not None and massive is not None
    layers = list(report.layers)
    layer_rate = report.layer_sink_rate()  # [layers, seq]
    norm_ratio = massive.norm_ratio()  # [layers, seq]
    sink_set = set(report.sink_positions)  # type: ignore[arg-type]
    str_tokens = report.str_tokens or []
    for role, pos in positions.items():
        row: dict[str, Any] = {"prompt_index": p_idx, "prompt": label, "role": role, "position": pos,
                               "seq_len": int(seq.shape[1])}
        if pos is None:
            rows.append({**row, **{m: math.nan for m in METRICS}, "n_queries": math.nan, "token": None})
            continue
        rows.append({
            **row,
            "token": str_tokens[pos] if pos < len(str_tokens) else None,
            "n_queries": int(report.n_queries[pos]),
            "sink_rate": float(report.sink_rate[pos]),
            "is_sink": float(pos in sink_set),
            "alpha_mean": float(report.alpha[:, :, pos].mean()),
            "n_massive": float(sum(1 for h in massive if h.position == pos)),
            "norm_ratio_max": float(norm_ratio[:, pos].max()),
        })
        for li, layer in enumerate(layers):
            layer_rows.append({"prompt_index": p_idx, "role": role, "layer": layer,
                               "sink_rate": float(layer_rate[li, pos]), "norm_ratio": float(norm_ratio[li, pos])})
    return layers


def _paired(table: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """The paired test of the claim: prefix end minus the matched control, per prompt, with a bootstrap CI."""
    paired = []
    for metric in METRICS:
        wide = table.pivot(index="prompt_index", columns="role", values=metric)
        if "prefix_end" in wide and CONTROL in wide:
            diff = (wide["prefix_end"] - wide[CONTROL]).to_numpy(dtype=float)
            mean, low, high, n = bootstrap_ci(diff, n_boot, seed=seed)
            paired.append({"role": f"prefix_end - {CONTROL}", "metric": metric, "mean": mean, "ci_low": low,
                           "ci_high": high, "n": n})
    return pd.DataFrame(paired)


def _draw(result: ExperimentResult, fig: Any) -> None:
    """Left: each statistic per role with CIs; right: the per-layer profile of sink rate and norm ratio."""
    axes = fig.subplots(1, 3)
    roles = list(ROLES)
    colours = {"bos": "tab:gray", "prefix_end": "tab:red", CONTROL: "tab:blue"}
    for ax, metric in zip(axes[:1], ("sink_rate",)):
        frame = result.summary[(result.summary["metric"] == metric) & result.summary["role"].isin(roles)]
        mean = frame["mean"].to_numpy()
        err = np.nan_to_num([mean - frame["ci_low"].to_numpy(), frame["ci_high"].to_numpy() - mean])
        ax.bar(range(len(frame)), np.nan_to_num(mean), yerr=err, capsize=4,
               color=[colours.get(r, "tab:green") for r in frame["role"]])
        ax.set_xticks(range(len(frame)))
        ax.set_xticklabels([str(r).replace("_", "\n") for r in frame["role"]], fontsize=8)
        ax.set_title(f"{metric} (mean, CI over prompts)", fontsize=9)
    profile = result.tables.get("layers", pd.DataFrame())
    for ax, metric, title in ((axes[1], "sink_rate", "share of heads with alpha > epsilon"),
                              (axes[2], "norm_ratio", "residual norm / layer median")):
        if len(profile):
            for role in roles:
                frame = profile[(profile["role"] == role) & (profile["metric"] == metric)]
                if len(frame):
                    ax.plot(frame["layer"], frame["mean"], marker="o", label=role, color=colours[role])
                    ax.fill_between(frame["layer"], frame["ci_low"], frame["ci_high"], alpha=0.2,
                                    color=colours[role])
        ax.set_xlabel("layer")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"attention sinks at BOS, the response-prefix end and the control over "
                 f"{result.config.get('n_prompts')} prompts", fontsize=10)
