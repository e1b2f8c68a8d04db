"""Goodfire's over-steering claim as an experiment: pushed harder, R1 *reverts* to its original behaviour before it
becomes incoherent (non-reasoning models drift further toward the concept instead).

A strength sweep (`r1_plugin.steering.sweep.sweep_strengths`: greedy, KV-cached, gated) per prompt; then for every
continuation (its text up to the first EOS, re-encoded after the prompt ids):

- target: `target_text` occurrences per generated token, or the mean over the generated positions of the
  log-probability the steered model (the same gate and strength, replayed over the continuation through a KV
  cache, as in generation) gives the `target_tokens` (logsumexp over them) for the next token;
- expression: the continuation re-run through the *unsteered* model, the feature's SAE activation (projection on
  the unit direction without an SAE) averaged over the generated positions;
- coherence: the unsteered model's mean per-token log-likelihood of the continuation, and the repeated-n-gram
  rate (share of the continuation's token n-grams seen earlier in it);
- reverted: `find_reversions` on the primary metric (the target if given, else the expression): the effect
  |value - unsteered value| fell below (1 - reversion_drop) x the largest effect at a smaller |strength|.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from r1_plugin.experiments.base import (
    DEFAULT_N_BOOT,
    ExperimentError,
    ExperimentResult,
    FeatureReadout,
    SteeringSpec,
    count_rate,
    prompt_list,
    prompt_tokens,
    repeated_ngram_rate,
    steering_spec,
    summarize,
    target_ids,
    target_logprob,
    token_logprobs,
)

NAME = "oversteer"
DEFAULT_STRENGTHS = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def continuation_ids(model: Any, text: str) -> list[int]:
    """Token ids of a continuation's text up to (not including) the first EOS."""
    eos_text = getattr(model.tokenizer, "eos_token", None)
    if eos_text:
        text = text.split(eos_text)[0]
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def replay_logprobs(model: Any, gate: Any, strength: float, spec: SteeringSpec, prompt: torch.Tensor,
                    continuation: torch.Tensor) -> torch.Tensor:
    """`[seq, vocab]` log-probs of the steered model over prompt + continuation, steered exactly as in generation:
    the prompt and the continuation run as two forwards over one KV cache, so the gate sees the same sequence."""
    from r1_plugin.drive import driver
    from r1_plugin.steering import steer

    with torch.no_grad(), steer(model, gate=gate, strength=strength, warn_never_opened=False,
                                **spec.steer_kwargs()):
        logits = driver(model).logits_over_cache([prompt, continuation])
    return logits[0].float().log_softmax(-1).cpu()


def _continuation_metrics(
    model: Any, table: pd.DataFrame, tokens: list[torch.Tensor], readout: FeatureReadout, gate: Any,
    spec: SteeringSpec, ngram: int, target_text: str | None, ids: list[int] | None,
) -> dict[str, list[float]]:
    """Per sweep row: length, expression, coherence and repetition of its continuation, and the target metrics
    (an empty list for a metric not asked for)."""
    metrics: dict[str, list[float]] = {k: [] for k in ("n_generated", "expression", "coherence_ll",
                                                        "repeated_ngram_rate", "target_rate", "target_logprob")}
    for rec in table.itertuples():
        prompt = tokens[int(rec.prompt_index)]
        n_prompt = prompt.shape[1]
        cont = continuation_ids(model, str(rec.text))
        seq = torch.cat([prompt[0].cpu(), torch.tensor(cont, dtype=torch.long)]).unsqueeze(0).to(model.cfg.device)
        expression, logprobs = readout(seq)
        n_gen = len(cont)
        metrics["n_generated"].append(n_gen)
        metrics["expression"].append(float(expression[0, n_prompt:].mean()) if n_gen else math.nan)
        metrics["coherence_ll"].append(float(token_logprobs(logprobs[0], seq[0])[n_prompt - 1:].mean())
                                       if n_gen else math.nan)
        metrics["repeated_ngram_rate"].append(repeated_ngram_rate(cont, ngram))
        if target_text is not None:
            metrics["target_rate"].append(count_rate(model.tokenizer.decode(cont), target_text, n_gen))
        if ids is not None:
            steered_lp = logprobs[0] if rec.baseline or rec.strength == 0 else replay_logprobs(
                model, gate, float(rec.strength), spec, prompt, seq[:, n_prompt:])
            metrics["target_logprob"].append(target_logprob(steered_lp, ids, n_prompt - 1, seq.shape[1] - 1))
    return metrics


def _add_effects_and_reversions(table: pd.DataFrame, primary: str, reversion_drop: float) -> None:
    """Add `<metric>_effect` (minus the prompt's baseline) and the per-prompt `reverted` flag of `primary` to
    `table` in place."""
    from r1_plugin.steering.sweep import find_reversions

    for metric in [m for m in ("expression", "target_rate", "target_logprob") if m in table]:
        base_of = table[table["baseline"]].set_index("prompt_index")[metric]
        table[f"{metric}_effect"] = table[metric] - table["prompt_index"].map(base_of)
    table["reverted"] = False
    for _, frame in table.groupby("prompt_index"):
        steered = frame[~frame["baseline"]]
        baseline = float(frame[frame["baseline"]][primary].iloc[0])
        flags, _ = find_reversions(list(steered["strength"]), [float(v) for v in steered[primary]], baseline,
                                   reversion_drop)
        table.loc[steered.index, "reverted"] = flags


def _notes(primary: str, reversion_drop: float, ngram: int) -> list[str]:
    """The result's notes: what the primary metric, reverted, coherence_ll and repeated_ngram_rate mean."""
    return [
        f"primary metric: {primary}; reverted: its effect fell below {1 - reversion_drop:g} x the largest effect "
        "at a smaller |strength| (per prompt; the summary gives the share of prompts).",
        "coherence_ll: the unsteered model's mean log-likelihood per generated token of the steered text (lower = "
        f"less like the model's own text); repeated_ngram_rate: share of {ngram}-grams seen earlier in the text.",
        "Goodfire's claim predicts the effect rising, then falling back toward 0 (reverted) at strengths where "
        "coherence_ll and the repeated-n-gram rate are still near their unsteered values.",
    ]


def oversteer(
    model: Any,
    prompts: str | torch.Tensor | Sequence[str | torch.Tensor],
    *,
    sae: Any = None,
    feature: int | Sequence[int] | None = None,
    direction: Any = None,
    hook_name: str | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    gate: Any = None,
    mode: str = "add",
    normalize: bool = False,
    relative: bool = False,
    target_text: str | None = None,
    target_tokens: str | Sequence[int] | None = None,
    max_new_tokens: int = 64,
    ngram: int = 3,
    reversion_drop: float = 0.5,
    batch_size: int = 8,
    chat: bool = True,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    tracker: Any = None,
    steering: SteeringSpec | None = None,
) -> ExperimentResult:
    """Sweep `strengths` under `gate` (default: after the response prefix) and report per strength the target
    effect, the feature's expression, coherence and the reversion flag (see the module docstring)."""
    from r1_plugin.steering import as_gate
    from r1_plugin.steering.sweep import sweep_strengths

    spec = steering_spec(steering, sae=sae, feature=feature, direction=direction, hook_name=hook_name, mode=mode,
                        normalize=normalize, relative=relative)
    strengths = [float(s) for s in strengths]
    if not strengths:
        raise ExperimentError("oversteer needs at least one strength")
    if ngram < 1:
        raise ExperimentError(f"ngram must be >= 1, got {ngram}")
    gate_obj = as_gate(gate)
    readout = FeatureReadout(model, spec)
    ids = target_ids(model, target_tokens)
    tokens = [prompt_tokens(model, p, chat) for p in prompt_list(prompts)]
    kwargs = spec.steer_kwargs()
    if kwargs["hook_name"] is None:
        kwargs.pop("hook_name")
    sweep = sweep_strengths(model, tokens, strengths, gate=gate_obj, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, reversion_drop=reversion_drop, chat=False, **kwargs)
    table = sweep.table.rename(columns={"feature_act": "feature_act_during"})
    table = table.drop(columns=[c for c in table.columns if c.startswith("reverted") or c == "peak_strength"])
    for key, values in _continuation_metrics(model, table, tokens, readout, gate_obj, spec, ngram, target_text,
                                             ids).items():
        if values:
            table[key] = values
    primary = "target_rate" if target_text is not None else "target_logprob" if ids is not None else "expression"
    _add_effects_and_reversions(table, primary, reversion_drop)
    steered_rows = table[~table["baseline"]].astype({"reverted": float})
    summary_metrics = [m for m in (f"{primary}_effect", "expression_effect", "coherence_ll", "repeated_ngram_rate",
                                   "kl", "reverted") if m in steered_rows]
    summary = summarize(steered_rows, "strength", list(dict.fromkeys(summary_metrics)), n_boot, seed)
    config = dict(experiment=NAME, steering=spec.describe(), hook_name=readout.hook_name, gate=repr(gate_obj),
                  strengths=strengths, primary_metric=primary, target_text=target_text, target_tokens=ids,
                  max_new_tokens=max_new_tokens, ngram=ngram, reversion_drop=reversion_drop,
                  n_prompts=len(tokens), n_boot=n_boot, seed=seed)
    result = ExperimentResult(
        name=NAME, table=table, summary=summary, config=config, notes=_notes(primary, reversion_drop, ngram), draw=_draw,
        table_columns=["prompt_index", "strength", "baseline", "gate_open_at", "n_generated", f"{primary}_effect",
                       "expression", "coherence_ll", "repeated_ngram_rate", "kl", "reverted", "text"],
    )
    if tracker is not None:
        result.log(tracker)
    return result


def reversion_region(summary: pd.DataFrame, threshold: float = 0.5) -> list[tuple[float, float]]:
    """(low, high) strength spans where at least `threshold` of the prompts reverted, per sign, out to the end."""
    frame = summary[summary["metric"] == "reverted"].sort_values("strength")
    spans = []
    for sign in (1.0, -1.0):
        side = frame[frame["strength"] * sign > 0]
        hit = side[side["mean"] >= threshold]
        if len(hit):
            first = float(hit["strength"].abs().min()) * sign
            last = float(side["strength"].abs().max()) * sign
            spans.append((min(first, last), max(first, last)))
    return spans


def _draw(result: ExperimentResult, fig: Any) -> None:
    """Each metric against strength (mean and CI over prompts), the reversion region shaded."""
    summary = result.summary
    metrics = [m for m in dict.fromkeys(summary["metric"]) if m != "reverted"]
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)[0]
    spans = reversion_region(summary)
    for ax, metric in zip(axes, metrics):
        frame = summary[summary["metric"] == metric].sort_values("strength")
        ax.plot(frame["strength"], frame["mean"], marker="o", color="tab:blue")
        ax.fill_between(frame["strength"], frame["ci_low"], frame["ci_high"], alpha=0.25, color="tab:blue")
        for i, (low, high) in enumerate(spans):
            ax.axvspan(low, high, color="tab:red", alpha=0.12, label="reversion region" if i == 0 else None)
        ax.set_xlabel("strength")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
        if spans and ax is axes[0]:
            ax.legend(fontsize=7)
    reverted = summary[summary["metric"] == "reverted"]
    share = float(np.nanmean(reverted["mean"])) if len(reverted) else math.nan
    fig.suptitle(f"over-steering {result.config.get('steering')} ({result.config.get('gate')}); mean share "
                 f"reverted {share:.2f}", fontsize=10)
