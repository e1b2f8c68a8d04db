"""The r1_plugin demo: load R1 (the embedded tiny R1 by default) and an SAE, find a feature in the feature database,
steer it after the response prefix, look at the attention sinks at the prefix end, log to W&B, write a report.

    python -m r1_plugin.demo                     # offline, embedded tiny R1, < 2 minutes on 2 CPU cores
    python -m r1_plugin.demo --model deepseek-ai/DeepSeek-R1 --sae-release goodfire-deepseek-r1-logic \\
        --sae-id layer_37 --features-labels logic/autointerp.db --features-activations logic/logic-1.ddb \\
        --device cuda --dtype bfloat16

See docs/demo.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from r1_plugin.demo import assets
from r1_plugin.demo import cli as _cli
from r1_plugin.demo.cli import build_parser, config_from_args
from r1_plugin.demo.config import (
    DEFAULT_FEATURE,
    DEFAULT_OUT,
    DEFAULT_STRENGTH_FACTOR,
    GENERATION_COLUMNS,
    SWEEP_FACTORS,
    DemoConfig,
    DemoError,
    DemoResult,
    Log,
)
from r1_plugin.demo.generation import (
    _completion,
    count_backtracks,
    feature_activations,
    first_divergence,
    generate,
    steered_generation,
)
from r1_plugin.demo.loading import _feature_db_paths, load_model, load_sae, resolve_feature
from r1_plugin.demo.report import _plot_activations, _plot_sweep, _sink_window, render_report

# `r1_plugin.demo.run` is the demo's public import path: the names above that this module does not use itself are
# re-exported here (tests, docs and users import them from here), each defined once in its own module.
__all__ = [
    "DEFAULT_FEATURE",
    "DEFAULT_OUT",
    "DEFAULT_STRENGTH_FACTOR",
    "GENERATION_COLUMNS",
    "SWEEP_FACTORS",
    "DemoConfig",
    "DemoError",
    "DemoResult",
    "Log",
    "_feature_db_paths",
    "_plot_activations",
    "_plot_sweep",
    "build_parser",
    "config_from_args",
    "count_backtracks",
    "feature_activations",
    "first_divergence",
    "generate",
    "load_model",
    "load_sae",
    "main",
    "render_report",
    "resolve_feature",
    "run_demo",
    "steered_generation",
]

def _strength(cfg: DemoConfig, top: float | None) -> float:
    """The steering strength: `--strength`, else DEFAULT_STRENGTH_FACTOR x the feature's top activation."""
    if cfg.strength is not None:
        return float(cfg.strength)
    if top is not None and top > 0:
        return DEFAULT_STRENGTH_FACTOR * top
    raise DemoError("no --strength given and the feature database has no activations to derive one from")


def _run_config(cfg: DemoConfig, hook_name: str, fid: int, label: str, strength: float) -> dict[str, Any]:
    """The W&B run's config: what was loaded, which feature, how strongly and where it was steered."""
    from r1_plugin.drive import default_backend

    return {
        "backend": cfg.backend or default_backend(),
        "model": cfg.model,
        "sae_release": cfg.sae_release or assets.SAE_NAME,
        "sae_id": cfg.sae_id,
        "hook_name": hook_name,
        "feature_id": fid,
        "feature_label": label,
        "strength": strength,
        "gate": "AfterResponsePrefix()",
        "max_new_tokens": cfg.max_new_tokens,
        "prompts": list(cfg.prompts),
        "device": cfg.device,
        "dtype": cfg.dtype,
        "first_n_layers": cfg.first_n_layers,
        "n_devices": cfg.n_devices,
    }


def _generations(
    model: Any, sae: Any, cfg: DemoConfig, fid: int, label: str, strength: float, log: Log
) -> tuple[list[dict[str, Any]], list[tuple[str, torch.Tensor, torch.Tensor, int | None]], torch.Tensor | None]:
    """Unsteered and steered generation per prompt: (one row each, the first prompt's activation traces, its
    unsteered sequence)."""
    from r1_plugin.drive import driver

    rows: list[dict[str, Any]] = []
    act_traces: list[tuple[str, torch.Tensor, torch.Tensor, int | None]] = []
    first_unsteered: torch.Tensor | None = None
    for i, prompt in enumerate(cfg.prompts):
        tokens = driver(model).prompt_tokens(prompt)
        n = tokens.shape[1]
        plain = generate(model, tokens, cfg.max_new_tokens)
        steered, gate = steered_generation(model, sae, fid, strength, tokens, cfg.max_new_tokens)
        div = first_divergence(plain, steered)
        un_text, st_text = _completion(model, plain, n), _completion(model, steered, n)
        rows.append({
            "prompt": prompt,
            "unsteered": un_text,
            "steered": st_text,
            "gate_position": gate,
            "strength": strength,
            "feature_id": fid,
            "feature_label": label,
            "first_divergence": div,
            "backtracks_unsteered": count_backtracks(un_text),
            "backtracks_steered": count_backtracks(st_text),
            "prompt_tokens": n,
        })
        log(f"[{i + 1}/{len(cfg.prompts)}] {prompt!r}: gate at {gate}, first divergence at {div}")
        if i == 0:
            first_unsteered = plain
            act_traces += [
                (f"unsteered: {prompt}", plain, feature_activations(model, sae, plain, fid), gate),
                (f"steered (+{strength:.3g}): {prompt}", steered,
                 feature_activations(model, sae, steered, fid), gate),
            ]
    return rows, act_traces, first_unsteered


def _sweep(model: Any, sae: Any, cfg: DemoConfig, fid: int, label: str, strength: float, out: Path, tracker: Any,
           files: dict[str, Path]) -> list[dict[str, Any]]:
    """The first prompt steered at SWEEP_FACTORS x `strength`: rows logged, plotted and added to `files`."""
    import pandas as pd

    from r1_plugin.drive import driver

    sweep: list[dict[str, Any]] = []
    tokens = driver(model).prompt_tokens(cfg.prompts[0])
    for factor in SWEEP_FACTORS:
        s = strength * factor
        seq, _ = steered_generation(model, sae, fid, s, tokens, cfg.max_new_tokens)
        text = _completion(model, seq, tokens.shape[1])
        sweep.append({"strength": s, "backtracks": count_backtracks(text),
                      "completion_tokens": seq.shape[1] - tokens.shape[1], "text": text})
    tracker.log_table("sweep", sweep)
    tracker.log_curve("sweep_curve", pd.DataFrame(sweep), x="strength", ys=["backtracks", "completion_tokens"])
    fig = _plot_sweep(sweep, label, out / "steering_sweep.png")
    files["steering_sweep"] = out / "steering_sweep.png"
    tracker.log_figure("steering_sweep", fig)
    return sweep


def _sinks(model: Any, seq: torch.Tensor, out: Path, tracker: Any, files: dict[str, Path]) -> dict[str, Any]:
    """R1's prefix-end sink check on `seq`: heatmap and tables logged, the report's sinks section returned."""
    from r1_plugin.sinks import check_response_prefix_sink

    check = check_response_prefix_sink(model, seq)
    # alpha (max over heads) shows where attention rests even where no head passes epsilon
    check.save_heatmap(out / "sinks_heatmap.png", value="alpha_max")
    files["sinks_heatmap"] = out / "sinks_heatmap.png"
    tracker.log_figure("sinks_heatmap", out / "sinks_heatmap.png")
    window = _sink_window(check)
    sinks = {
        "summary": check.summary(),
        "window": window,
        "prefix_end": check.prefix_end,
        "prefix_end_token": check.prefix_end_token,
        "is_sink": check.is_sink,
        "sink_positions": [int(p) for p in check.report.sink_positions],  # type: ignore[union-attr]
    }
    if window:
        tracker.log_table("sinks_prefix_end", window)
    tracker.log_table("sinks", check.to_dataframe())
    return sinks


def _write_report(result: DemoResult, cfg: DemoConfig, out: Path, tracker: Any) -> None:
    """Render report.md and report.json under `out`, add them to `result.files` and log the report artifact."""
    result.report = render_report(result, cfg)
    (out / "report.md").write_text(result.report + "\n", encoding="utf-8")
    result.files["report"] = out / "report.md"
    payload = {k: v for k, v in asdict(result).items() if k != "report"}
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    result.files["report_json"] = out / "report.json"
    tracker.log_artifact_file(out / "report.md", "demo-report", type="report")


def run_demo(cfg: DemoConfig, log: Log = print) -> DemoResult:
    """Run the whole demo and return what it produced (files under `cfg.out`, W&B run under wandb_dir)."""
    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.first_n_layers is not None:
        log("note: --first-n-layers truncates the model; its generations are not the full model's")
    t0 = time.time()
    model = load_model(cfg)
    sae = load_sae(cfg)
    log(f"loaded {cfg.model} and SAE {cfg.sae_name} in {time.time() - t0:.1f}s")
    from r1_plugin.steering import sae_hook_name
    from r1_plugin.tracking import start_run

    hook_name = sae_hook_name(sae)
    fid, label, examples, top = resolve_feature(cfg, sae)
    strength = _strength(cfg, top)
    log(f"feature {fid}: {label!r} (top activation {top}); strength {strength:.3g}")

    wandb_dir = cfg.wandb_dir or (Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else out)
    files: dict[str, Path] = {}
    with start_run("demo", _run_config(cfg, hook_name, fid, label, strength), mode=cfg.wandb_mode, dir=wandb_dir,
                   seed=cfg.seed) as tracker:
        if examples:
            tracker.log_table(
                "feature_examples",
                [{"strength": e.strength, "token": e.token, "before": e.before, "after": e.after} for e in examples],
            )
        rows, act_traces, first_unsteered = _generations(model, sae, cfg, fid, label, strength, log)
        tracker.log_generations(rows)
        sweep = _sweep(model, sae, cfg, fid, label, strength, out, tracker, files) if cfg.sweep and cfg.prompts else []
        if act_traces:
            fig = _plot_activations(model, act_traces, label, out / "feature_activations.png")
            files["feature_activations"] = out / "feature_activations.png"
            tracker.log_figure("feature_activations", fig)
        sinks: dict[str, Any] = {"summary": "no prompts", "window": []}
        if first_unsteered is not None:
            sinks = _sinks(model, first_unsteered, out, tracker, files)
        from r1_plugin.demo.feature_map import write_demo_map

        files.update(write_demo_map(sae, *_feature_db_paths(cfg), out, cfg.sae_name,
                                    seed=cfg.seed, feature_id=fid, log=log))
        tracker.log_figure("feature_map", files["feature_map_png"])
        experiments_md = ""
        if cfg.experiments and cfg.prompts:
            from r1_plugin.demo.experiments import run_experiments

            found = run_experiments(model, sae, fid, strength, cfg.prompts, out, tracker, log)
            files.update(found.files)
            experiments_md = found.report_section()
        tracker.log_summary({
            "feature_id": fid,
            "feature_label": label,
            "strength": strength,
            "prefix_end_is_sink": sinks.get("is_sink"),
            "backtracks_unsteered": sum(r["backtracks_unsteered"] for r in rows),
            "backtracks_steered": sum(r["backtracks_steered"] for r in rows),
        })
        result = DemoResult(fid, label, strength, hook_name, rows, sweep, sinks, files, tracker.run_dir,
                            time.time() - started, "", experiments=experiments_md)
        _write_report(result, cfg, out, tracker)
    result.seconds = time.time() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m r1_plugin.demo`: the demo's command line (`cli.main`) running this module's
    `run_demo` (looked up at call time, so a test may replace it)."""
    return _cli.main(argv, run_demo)
