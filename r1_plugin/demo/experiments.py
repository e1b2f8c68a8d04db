"""The demo's short run of the four findings experiments (prefix gating, over-steering, segments, sinks): a few
prompts and few tokens, so that `make demo` shows each table and plot in seconds on the embedded tiny R1.

The findings are Goodfire's claims about R1. The tiny R1 is a 4-layer model trained on synthetic traces; what it
shows is said in the report, read off the numbers of this run, not assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_PROMPTS = 2  # prompts per experiment
PREFIX_GATING_TOKENS = 48
OVERSTEER_TOKENS = 40
OVERSTEER_FACTORS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # x the demo's strength
TRACE_TOKENS = 120  # unsteered traces for segments and sinks: long enough to reach the answer
N_BOOT = 200


@dataclass
class DemoExperiments:
    """The four results, their files (under <out>/experiments/<name>/) and what they show on this model."""

    results: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    observations: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def report_section(self) -> str:
        """The markdown section the demo report includes: per experiment the observation, summary and plot."""
        from r1_plugin.experiments.base import markdown_table

        lines = ["## Goodfire's findings on this model (short runs; `r1-plugin experiment NAME` for full ones)", ""]
        for name, result in self.results.items():
            lines += [f"### {name}", "", self.observations.get(name, ""), ""]
            frame = result.summary
            if name == "oversteer":
                frame = frame[frame["metric"].isin([result.config["primary_metric"] + "_effect", "coherence_ll",
                                                    "reverted"])]
            if name == "sinks":
                frame = frame[frame["metric"].isin(["sink_rate", "alpha_mean", "norm_ratio_max"])]
            lines += [markdown_table(frame), ""]
            if name == "segments":
                lines += [markdown_table(result.tables["segments"]), ""]
            plot = self.files.get(f"{name}_plot")
            if plot is not None:
                lines += [f"![{name}](experiments/{name}/{plot.name})", ""]
        lines.append(f"(the four experiments took {self.seconds:.1f}s)")
        return "\n".join(lines)


def _observe_prefix_gating(result: Any) -> str:
    t = result.table
    n = t["prompt_index"].nunique()
    steered = t[t["condition"] != "unsteered"]
    changed = steered.groupby("condition", sort=False)["diverged"].sum().astype(int).to_dict()
    parts = [f"{cond}: {k}/{n}" for cond, k in changed.items()]
    text = ("Prompts whose continuation changed under each gate: " + ", ".join(parts) + ". Goodfire's claim is "
            "that on R1 steering from the first response token (or only inside the response prefix) does little "
            "and steering after the prefix works; ")
    first, after = changed.get("first_response_token", 0), changed.get("after_response_prefix", 0)
    if first == 0 and after == 0:
        text += "here no gate changed the text: raise the strength."
    elif first >= after:
        text += ("here steering from the first token changed the text at least as often as steering after the "
                 "prefix, so the claim is not reproduced on this model.")
    else:
        text += "here steering from the first token changed the text less often, as the claim predicts."
    # Where did steering from the first token first change the text: inside the prefix, or after it?
    by = t.set_index(["prompt_index", "condition"])
    inside = 0
    if not {"first_response_token", "after_response_prefix"} <= set(changed):
        return text
    for p in range(n):
        row, prefix_gate = by.loc[(p, "first_response_token")], by.loc[(p, "after_response_prefix")]["open_at"]
        if bool(row["diverged"]) and row["open_at"] + row["first_diff"] <= prefix_gate:
            inside += 1
    return text + (f" Steered from the first token, the response prefix itself changed in {inside}/{n} prompts.")


def _observe_oversteer(result: Any) -> str:
    s = result.summary
    share = s[s["metric"] == "reverted"].set_index("strength")["mean"]
    reverted = [float(k) for k, v in share.items() if v >= 0.5]
    coherence = s[s["metric"] == "coherence_ll"].set_index("strength")["mean"]
    before_incoherence = bool(reverted) and coherence.loc[reverted[0]] > coherence.iloc[-1]
    return (f"Primary metric {result.config['primary_metric']}; strengths flagged as reversion in most prompts: "
            f"{', '.join(f'{k:g}' for k in reverted) if reverted else 'none'}. The unsteered model's "
            f"log-likelihood per token of the steered text goes from {coherence.iloc[0]:.2f} to "
            f"{coherence.iloc[-1]:.2f} at the largest strength: "
            + ("reversion before incoherence is seen here." if before_incoherence
               else "this model does not revert before it becomes incoherent."))


def _observe_segments(result: Any) -> str:
    pairs = result.summary.set_index(["segment_a", "segment_b"])["js_divergence"].dropna()
    if pairs.empty:
        return "The traces did not reach two non-empty segments: raise the number of generated tokens."
    low, high = pairs.idxmin(), pairs.idxmax()
    return (f"Jensen-Shannon divergence between segments' firing rates ranges from {pairs.min():.2f} "
            f"({low[0]} vs {low[1]}) to {pairs.max():.2f} ({high[0]} vs {high[1]}): the tiny model's features do "
            "separate the segments, as Goodfire saw for R1; with synthetic traces of four kinds of text that is "
            "expected, not evidence about R1.")


def _observe_sinks(result: Any) -> str:
    s = result.summary.set_index(["role", "metric"])["mean"]
    any_sink = float(result.table["sink_rate"].max(skipna=True) or 0.0) > 0
    return (f"Mean sink rate at BOS {s[('bos', 'sink_rate')]:.2f}, at the prefix end {s[('prefix_end', 'sink_rate')]:.2f}, "
            f"at the control {s[('thinking_start', 'sink_rate')]:.2f}; "
            + ("" if any_sink else "no head of this model gives any of these positions alpha > epsilon (no sinks at "
               "all, BOS included), so the claim cannot be tested here. ")
            + f"Largest residual-norm ratio: prefix end {s[('prefix_end', 'norm_ratio_max')]:.2f}, control "
            f"{s[('thinking_start', 'norm_ratio_max')]:.2f}, BOS {s[('bos', 'norm_ratio_max')]:.2f}.")


def run_experiments(
    model: Any,
    sae: Any,
    feature: int,
    strength: float,
    prompts: Sequence[str],
    out: Path,
    tracker: Any = None,
    log: Callable[[str], None] = print,
) -> DemoExperiments:
    """Short runs of the four experiments on the first prompts; files under `out/experiments/<name>/`."""
    import time

    from r1_plugin.chat import r1_chat_tokens
    from r1_plugin.experiments import oversteer, prefix_gating, segments, sink_check
    from r1_plugin.experiments.base import generate_greedy

    started = time.time()
    chosen = list(prompts)[:DEMO_PROMPTS]
    done = DemoExperiments()
    if not chosen:
        return done
    done.results["prefix_gating"] = prefix_gating(
        model, chosen, sae=sae, feature=feature, strength=strength, target_text="Wait",
        max_new_tokens=PREFIX_GATING_TOKENS, n_boot=N_BOOT)
    done.results["oversteer"] = oversteer(
        model, chosen[:1], sae=sae, feature=feature, strengths=[strength * f for f in OVERSTEER_FACTORS],
        max_new_tokens=OVERSTEER_TOKENS, n_boot=N_BOOT)
    traces = []
    for prompt in chosen:
        traces.append(generate_greedy(model, r1_chat_tokens(model, prompt), TRACE_TOKENS).clone())
    done.results["segments"] = segments(model, traces, sae=sae, generate=False, top_k=5)
    done.results["sinks"] = sink_check(model, traces, generate=False, n_boot=N_BOOT)
    observe = {"prefix_gating": _observe_prefix_gating, "oversteer": _observe_oversteer,
               "segments": _observe_segments, "sinks": _observe_sinks}
    for name, result in done.results.items():
        files = result.save(Path(out) / "experiments" / name)
        done.files[f"{name}_report"] = files["report"]
        done.files[f"{name}_plot"] = files["plot"]
        done.observations[name] = observe[name](result)
        if tracker is not None:
            result.log(tracker)
        log(f"experiment {name}: {done.observations[name][:140]}...")
    done.seconds = time.time() - started
    return done
