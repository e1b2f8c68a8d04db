"""The demo's plots (feature activations, steering sweep) and its markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from r1_plugin.demo.config import DemoConfig, DemoResult


def _plot_activations(
    model: Any, traces: list[tuple[str, torch.Tensor, torch.Tensor, int | None]], label: str, path: Path
) -> Any:
    """One panel per trace: the feature's activation per token, the gate position marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 2.6 * len(traces)))
    axes = fig.subplots(len(traces), 1, squeeze=False)
    for ax, (title, tokens, acts, gate) in zip(axes[:, 0], traces):
        strs = [s.replace("\n", "\\n").translate(_PLOT_SAFE) for s in model.to_str_tokens(tokens[0])]
        ax.bar(range(len(acts)), acts.numpy(), color="tab:blue")
        if gate is not None:
            ax.axvline(gate - 0.5, color="red", linestyle="--", label="gate opens (after response prefix)")
            ax.legend(loc="upper left", fontsize=8)
        step = max(1, len(strs) // 80)
        ax.set_xticks(range(0, len(strs), step))
        ax.set_xticklabels(strs[::step], rotation=90, fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("activation")
    fig.suptitle(f"feature: {label}".translate(_PLOT_SAFE))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return fig


def _plot_sweep(rows: list[dict[str, Any]], label: str, path: Path) -> Any:
    """Backtracking sentences and divergence vs steering strength."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    xs = [r["strength"] for r in rows]
    ax.plot(xs, [r["backtracks"] for r in rows], marker="o", label="'Wait' sentences in thinking")
    ax.plot(xs, [r["completion_tokens"] / 10 for r in rows], marker="s", label="completion tokens / 10")
    ax.set_xlabel("steering strength (added x decoder row, after the response prefix)")
    ax.set_title(f"strength sweep: {label}".translate(_PLOT_SAFE), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return fig


_PLOT_SAFE = str.maketrans({"\uff5c": "|", "\u2581": "_"})


def _sink_window(check: Any, radius: int = 4) -> list[dict[str, Any]]:
    """Per-position sink numbers for the tokens around the response-prefix end."""
    if check.prefix_end is None:
        return []
    df = check.to_dataframe()
    lo, hi = max(0, check.prefix_end - radius), check.prefix_end + radius
    window = df[(df["position"] >= lo) & (df["position"] <= hi)]
    cols = [c for c in ("position", "token", "sink_rate", "alpha_max", "norm_ratio_max", "is_sink", "role")
            if c in window.columns]
    return [{c: (v.item() if hasattr(v, "item") else v) for c, v in row.items()} for row in window[cols].to_dict("records")]


def _fmt_block(text: str, indent: str = "    ") -> str:
    return "\n".join(indent + line for line in text.splitlines())


def render_report(result: DemoResult, cfg: DemoConfig) -> str:
    """The human-readable report (also written to <out>/report.md)."""
    lines = [
        "# r1_plugin demo",
        "",
        f"model: {cfg.model}   SAE: {cfg.sae_name} at {result.hook_name}",
        f"feature {result.feature_id}: {result.feature_label}   steering strength {result.strength:.3g} "
        "(gate: AfterResponsePrefix, KV-cached generation)",
        "",
        "## Unsteered vs steered",
    ]
    for row in result.generations:
        lines += [
            "",
            f"### {row['prompt']}",
            f"gate opened at position {row['gate_position']}; first differing token at {row['first_divergence']}; "
            f"'Wait' sentences {row['backtracks_unsteered']} -> {row['backtracks_steered']}",
            "unsteered:",
            _fmt_block(row["unsteered"]),
            "steered:",
            _fmt_block(row["steered"]),
        ]
    if result.sweep:
        lines += ["", "## Strength sweep (first prompt)", "", "strength | 'Wait' sentences | completion tokens"]
        lines += [f"{r['strength']:8.3g} | {r['backtracks']:16d} | {r['completion_tokens']}" for r in result.sweep]
    lines += ["", "## Attention sinks around the end of the response prefix", "", result.sinks["summary"], ""]
    if result.sinks["window"]:
        lines.append("position | token | sink_rate | role")
        lines += [
            f"{w['position']:8d} | {str(w['token'])!r} | {w['sink_rate']:.3f} | {w.get('role', '')}"
            for w in result.sinks["window"]
        ]
    if "feature_map_html" in result.files:
        lines += ["", "## Feature map", "", f"UMAP of the SAE's decoder directions: {result.files['feature_map_png']}; "
                  f"open {result.files['feature_map_html']} in a browser (offline; search labels, click a point)."]
    if result.experiments:
        lines += ["", result.experiments]
    lines += ["", "## Files", ""]
    lines += [f"- {name}: {path}" for name, path in result.files.items()]
    if result.wandb_run_dir is not None:
        lines.append(f"- W&B offline run: {result.wandb_run_dir} (upload later with `wandb sync <dir>`)")
    if cfg.embedded:
        lines += ["", "Note: the embedded tiny R1 was trained on synthetic traces and its feature labels are "
                  "heuristic (most common activating token), not LLM auto-interpretation."]
    lines += ["", f"done in {result.seconds:.1f}s"]
    return "\n".join(lines)
