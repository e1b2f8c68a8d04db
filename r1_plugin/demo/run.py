"""The r1_plugin demo: load R1 (the embedded tiny R1 by default) and an SAE, find a feature in the feature database,
steer it after the response prefix, look at the attention sinks at the prefix end, log to W&B, write a report.

    python -m r1_plugin.demo                     # offline, embedded tiny R1, < 2 minutes on 2 CPU cores
    python -m r1_plugin.demo --model deepseek-ai/DeepSeek-R1 --sae-release goodfire-deepseek-r1-logic \\
        --sae-id layer_37 --features-labels logic/autointerp.db --features-activations logic/logic-1.ddb \\
        --device cuda --dtype bfloat16

See docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1_plugin.demo import assets
from r1_plugin.demo.synthetic import demo_questions
from r1_plugin.errors import R1PluginError

DEFAULT_OUT = Path("demo_out")
DEFAULT_FEATURE = "before backtracking"
FALLBACK_FEATURE = "backtracking"  # searched when the default finds nothing (e.g. Goodfire's labels)
# Auto strength: this many times the feature's strongest activation in the feature database.
DEFAULT_STRENGTH_FACTOR = 3.0
SWEEP_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
BACKTRACK_PATTERN = re.compile(r"\bWait\b")
GENERATION_COLUMNS: tuple[str, ...] = (
    "prompt",
    "unsteered",
    "steered",
    "gate_position",
    "strength",
    "feature_id",
    "feature_label",
    "first_divergence",
    "backtracks_unsteered",
    "backtracks_steered",
)

Log = Callable[[str], None]


class DemoError(R1PluginError, RuntimeError):
    """The demo cannot run as asked (no feature found, missing feature database, bad options)."""


@dataclass
class DemoConfig:
    """Everything the demo does; the defaults run the embedded tiny R1 offline."""

    model: str = str(assets.MODEL_DIR)  # the embedded tiny R1, by path
    sae_release: str | None = None  # None: the embedded tiny R1's SAE, loaded by path from the package
    sae_id: str = assets.SAE_ID
    feature: str = DEFAULT_FEATURE  # a label search text or a feature id
    strength: float | None = None  # None: DEFAULT_STRENGTH_FACTOR x the feature's top activation in the DB
    prompts: Sequence[str] = field(default_factory=lambda: list(demo_questions()))
    device: str = "cpu"
    dtype: str = "float32"
    first_n_layers: int | None = None
    n_devices: int = 1  # split the blocks across this many GPUs, by bytes (R1 with keep_fp8: one 8xH200 node)
    keep_fp8: bool = False  # keep R1's FP8 checkpoint weights FP8 in memory (from_pretrained's keep_fp8)
    sae_device: str | None = None  # where the SAE sits (default: `device`)
    out: Path = DEFAULT_OUT
    max_new_tokens: int = 120
    features_labels: Path | None = None  # autointerp.db / .csv; default: the embedded DB for the embedded SAE
    features_activations: Path | None = None  # <sae>.ddb; default: the embedded DB for the embedded SAE
    sweep: bool = True
    experiments: bool = True  # short runs of the four findings experiments (r1_plugin/demo/experiments.py)
    wandb_mode: str | None = "offline"
    wandb_dir: Path | None = None  # default: $WANDB_DIR, else <out>
    seed: int = 0
    backend: str | None = None  # "hooked" (HookedTransformer) or "bridge" (TransformerBridge); None: the default

    @property
    def embedded(self) -> bool:
        """Whether the model is the embedded tiny R1 (loaded by path from the package: nothing touches the hub)."""
        return assets.is_embedded_model(self.model)

    @property
    def sae_name(self) -> str:
        """The SAE as the report names it: `<release>/<id>`, or the embedded SAE's name."""
        return f"{self.sae_release}/{self.sae_id}" if self.sae_release else f"{assets.SAE_NAME}/{assets.SAE_ID}"


@dataclass
class DemoResult:
    """What the demo produced: the feature, the generations, the sink check, and where the files are."""

    feature_id: int
    feature_label: str
    strength: float
    hook_name: str
    generations: list[dict[str, Any]]
    sweep: list[dict[str, Any]]
    sinks: dict[str, Any]
    files: dict[str, Path]
    wandb_run_dir: Path | None
    seconds: float
    report: str
    experiments: str = ""  # the findings experiments' report section (markdown)


def load_model(cfg: DemoConfig) -> Any:
    """The model through `r1_plugin.drive.load_model`: `HookedTransformer.from_pretrained_no_processing(cfg.model,
    ...)` (backend "hooked") or `TransformerBridge.boot_transformers(cfg.model, ...)` (backend "bridge"); the same
    call for the tiny R1 (its packaged folder) and R1."""
    from r1_plugin.drive import ModelDriveError
    from r1_plugin.drive import load_model as drive_load

    kwargs: dict[str, Any] = {"device": cfg.device, "dtype": cfg.dtype}
    if cfg.first_n_layers is not None:
        kwargs["first_n_layers"] = cfg.first_n_layers
    if cfg.n_devices > 1:
        kwargs["n_devices"] = cfg.n_devices
    if cfg.keep_fp8:
        kwargs["keep_fp8"] = True
    try:
        model = drive_load(cfg.model, cfg.backend, **kwargs)
    except ModelDriveError as exc:
        raise DemoError(str(exc)) from exc
    model.eval()
    return model


def load_sae(cfg: DemoConfig) -> Any:
    """The embedded SAE by path (`assets.load_sae`), else `SAE.from_pretrained(release, id)` through SAELens's
    registry (r1_plugin adds Goodfire's R1 releases to it)."""
    device = cfg.sae_device or cfg.device
    if cfg.sae_release is None:
        sae = assets.load_sae(device=device)
        sae.eval()
        return sae
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if cfg.sae_release not in directory:
        near = [r for r in directory if "r1" in r.lower()][:8]
        raise DemoError(f"SAE release {cfg.sae_release!r} is not registered with SAELens (R1 releases: {near})")
    sae = SAE.from_pretrained(cfg.sae_release, cfg.sae_id, device=device)
    sae.eval()
    return sae


def _feature_db_paths(cfg: DemoConfig) -> tuple[Path | None, Path | None]:
    """The feature database to search: the options, else the embedded one for the embedded SAE."""
    if cfg.features_labels is not None or cfg.features_activations is not None:
        return cfg.features_labels, cfg.features_activations
    if cfg.sae_release is None:
        return assets.FEATURES_LABELS, assets.FEATURES_ACTIVATIONS
    return None, None


def resolve_feature(cfg: DemoConfig, sae: Any) -> tuple[int, str, list[Any], float | None]:
    """(feature id, label, top examples, top activation) for `cfg.feature`: a label search or a numeric id."""
    from r1_plugin.features import FeatureDB

    labels, activations = _feature_db_paths(cfg)
    d_sae = int(sae.W_dec.shape[0])
    if labels is None and activations is None:
        if not cfg.feature.isdigit():
            raise DemoError(
                f"--feature {cfg.feature!r} is a label search, but there is no feature database for "
                f"{cfg.sae_release}: pass --features-labels/--features-activations, or a numeric --feature"
            )
        fid = int(cfg.feature)
        if not 0 <= fid < d_sae:
            raise DemoError(f"--feature {fid} is out of range for an SAE with {d_sae} features")
        return fid, f"feature {fid}", [], None
    with FeatureDB(labels=labels, activations=activations) as db:
        if cfg.feature.isdigit():
            fid = int(cfg.feature)
            label = db.label(fid)
        else:
            hits = db.search(cfg.feature, limit=5)
            if not hits and cfg.feature == DEFAULT_FEATURE:
                hits = db.search(FALLBACK_FEATURE, limit=5)
            if not hits:
                raise DemoError(
                    f"no feature label in {labels or activations} contains {cfg.feature!r}; "
                    "try another word, or pass a numeric --feature"
                )
            fid, label = hits[0].feature_id, hits[0].label
        if not 0 <= fid < d_sae:
            raise DemoError(f"feature {fid} from the database is out of range for an SAE with {d_sae} features")
        examples = db.top_examples(fid, k=5, context=8) if activations is not None else []
    top = max((e.strength for e in examples), default=None)
    return fid, label, examples, top


def _completion(model: Any, tokens: torch.Tensor, prompt_len: int) -> str:
    """Decoded text of the generated part of `tokens` [1, seq], special tokens kept."""
    return model.tokenizer.decode(tokens[0, prompt_len:].tolist(), skip_special_tokens=False)


def generate(model: Any, prompt_tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy KV-cached generation that stops at EOS; returns prompt + completion ids [1, seq]."""
    from r1_plugin.drive import driver

    return driver(model).generate_greedy(prompt_tokens, max_new_tokens)


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """First position where two [1, seq] token sequences differ (a length difference counts), else None."""
    from r1_plugin.experiments.base import first_difference

    return first_difference(a[0].tolist(), b[0].tolist())


def count_backtracks(text: str) -> int:
    """Backtracking sentences ("Wait, ...") in the thinking part of a completion."""
    return len(BACKTRACK_PATTERN.findall(text.split("</think>")[0]))


def steered_generation(
    model: Any, sae: Any, feature: int, strength: float, prompt_tokens: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, int | None]:
    """Generate while adding `strength` x the feature's decoder row after the response prefix; (tokens, gate pos)."""
    from r1_plugin.steering import AfterResponsePrefix, steer

    with steer(model, sae=sae, feature=feature, strength=strength, gate=AfterResponsePrefix(),
               warn_never_opened=False) as result:
        out = generate(model, prompt_tokens, max_new_tokens)
    open_at = result.open_at[0] if result.records else None
    return out, open_at


def feature_activations(model: Any, sae: Any, tokens: torch.Tensor, feature: int) -> torch.Tensor:
    """The feature's SAE activation at every position of `tokens` [1, seq] (no steering): [seq]."""
    from r1_plugin.drive import driver
    from r1_plugin.steering import encode_features, sae_hook_name

    hook = sae_hook_name(sae)
    with torch.no_grad():
        _, cache = driver(model).run_with_cache(tokens, [hook])
    return encode_features(sae, cache[hook], feature)[0, :, 0].float().cpu()


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


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line options (the model flags are r1-plugin's own: r1_plugin/cli/_model_args.py)."""
    from r1_plugin.cli._errors import CLIParser
    from r1_plugin.cli._model_args import add_model_args
    from r1_plugin.cli._values import count, finite_float, in_file, out_dir

    p = CLIParser(
        prog="python -m r1_plugin.demo",
        description="Steer an SAE feature of R1 after its response prefix, look at the prefix-end attention sinks, "
        "log to W&B. Defaults: the embedded tiny R1, offline, on the CPU in float32.",
    )
    add_model_args(p, model_default=str(assets.MODEL_DIR))
    p.set_defaults(device="cpu", dtype="float32")  # the demo's defaults: the tiny R1 on the CPU, in float32
    for flag, text in (("--device", "torch device, e.g. cuda:0 (default: cpu)"),
                       ("--dtype", "weights and activations dtype (default: float32)")):
        p._option_string_actions[flag].help = text  # the same flag, with the demo's default
    p.add_argument("--sae-release", default=None,
                   help="SAELens release (default: the embedded tiny R1's SAE, loaded from the package folder)")
    p.add_argument("--sae-id", default=assets.SAE_ID, help="SAE id within the release (default: %(default)s)")
    p.add_argument("--feature", default=DEFAULT_FEATURE,
                   help="feature id, or words to search the labels for (default: %(default)s)")
    p.add_argument("--strength", type=finite_float, default=None,
                   help=f"steering strength (default: {DEFAULT_STRENGTH_FACTOR} x the feature's top activation)")
    p.add_argument("--prompt", action="append", default=None, help="user prompt (repeatable; default: 4 questions)")
    p.add_argument("--max-new-tokens", type=count(), default=120)
    p.add_argument("--features-labels", type=in_file, default=None, help="autointerp.db/.csv of the SAE")
    p.add_argument("--features-activations", type=in_file, default=None, help="<sae>.ddb activations file")
    p.add_argument("--no-sweep", action="store_true", help="skip the strength sweep")
    p.add_argument("--no-experiments", action="store_true", help="skip the four findings experiments")
    p.add_argument("--out", type=out_dir, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), default="offline")
    p.add_argument("--wandb-dir", type=Path, default=None, help="W&B folder (default: $WANDB_DIR, else --out)")
    p.add_argument("--seed", type=count(at_least=0), default=0)
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A DemoConfig from parsed options."""
    from r1_plugin.cli._model_args import ModelArgsError

    for flag in ("sae_dtype", "memory_per_device"):
        if getattr(args, flag, None) is not None:
            raise ModelArgsError(f"the demo does not take --{flag.replace('_', '-')} (it runs with the model's dtype "
                                 "and each device's total memory)")
    return DemoConfig(
        model=args.model,
        sae_release=args.sae_release,
        sae_id=args.sae_id,
        feature=str(args.feature),
        strength=args.strength,
        prompts=args.prompt or list(demo_questions()),
        device=args.device,
        dtype=args.dtype,
        first_n_layers=args.first_n_layers,
        n_devices=args.n_devices or 1,
        keep_fp8=args.keep_fp8,
        sae_device=args.sae_device,
        out=args.out,
        max_new_tokens=args.max_new_tokens,
        features_labels=args.features_labels,
        features_activations=args.features_activations,
        sweep=not args.no_sweep,
        experiments=not args.no_experiments,
        wandb_mode=args.wandb_mode,
        wandb_dir=args.wandb_dir,
        seed=args.seed,
        backend=args.backend,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m r1_plugin.demo`: any failure is one line on stderr and exit code 2."""
    from r1_plugin.cli import debug
    from r1_plugin.cli._errors import report_failure

    prog = "python -m r1_plugin.demo"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from r1_plugin.cli._model_args import check_device

        check_device(args.device, "--device", args.n_devices or 1)  # a device this machine lacks: before any load
        check_device(args.sae_device, "--sae-device")
        result = run_demo(config_from_args(args))
    except Exception as exc:
        if debug():
            raise
        return report_failure(prog, exc, args)
    print()
    print(result.report)
    return 0
