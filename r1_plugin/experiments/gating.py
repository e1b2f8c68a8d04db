"""Goodfire's first R1 claim as an experiment: steering from the first response token does little; steering once
the response prefix ("Okay, so the user asked about ...") is written works.

The same feature and strength run under four gates (`default_conditions`): from the first response token,
inside the response prefix only, after the response prefix, and within the thinking trace only. Per prompt and
condition it records, against the unsteered greedy continuation of the same prompt:

- expression: the steered continuation re-run through the *unsteered* model, the feature's SAE activation (sum
  over the features for several; the projection on the unit direction without an SAE) averaged over the
  generated positions; effect = steered - unsteered;
- behaviour: `target_text` occurrences per generated token, and/or the mean over generation steps of the
  log-probability the (steered) model gave the `target_tokens` (logsumexp over them) for its next token;
- divergence: the first generated token that differs and the token edit distance.

`summary` gives the mean effect per condition with a seeded percentile-bootstrap CI over prompts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from r1_plugin.experiments.base import (
    DEFAULT_N_BOOT,
    ExperimentError,
    ExperimentResult,
    FeatureReadout,
    SteeringSpec,
    count_rate,
    edit_distance,
    eos_id,
    first_difference,
    prompt_label,
    prompt_list,
    prompt_tokens,
    steering_spec,
    summarize,
    target_ids,
)
from r1_plugin.response_prefix import ResponsePrefixSpec

NAME = "prefix_gating"
CONDITIONS = ("first_response_token", "response_prefix_only", "after_response_prefix", "thinking_only")
METRICS = ("expression_effect", "target_rate_effect", "target_logprob_effect", "diverged", "first_diff",
           "edit_distance", "n_steered")
NOTES = (
    "expression: the steered text re-run through the unsteered model; mean SAE activation of the feature "
    "over the generated positions. expression_effect = steered - unsteered, per prompt.",
    "Goodfire's claim predicts small effects for first_response_token and response_prefix_only and larger "
    "ones for after_response_prefix (and thinking_only).",
    "first_diff: index (in generated tokens) of the first token that differs from the unsteered "
    "continuation (NaN when identical); diverged: fraction of prompts whose continuation changed.",
)


def default_conditions(spec: ResponsePrefixSpec | None = None) -> dict[str, Any]:
    """The four gates: GeneratedOnly; GeneratedOnly & Until(AfterResponsePrefix); AfterResponsePrefix; Thinking
    (each response-prefix end as `spec` says; default `ResponsePrefixSpec()`)."""
    from r1_plugin.steering import AfterResponsePrefix, GeneratedOnly, Thinking, Until

    spec = spec or ResponsePrefixSpec()
    return {
        "first_response_token": GeneratedOnly(),
        "response_prefix_only": GeneratedOnly() & Until(AfterResponsePrefix(spec=spec)),
        "after_response_prefix": AfterResponsePrefix(spec=spec),
        "thinking_only": Thinking(end=spec.end, max_tokens=spec.max_tokens),
    }


def _generate(model: Any, tokens: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy KV-cached generation; (ids `[seq]`, per-step log-probs `[n_generated, vocab]` of the model as run)."""
    from r1_plugin.drive import driver

    out = driver(model).generate(tokens, max_new_tokens, output_logits=True)
    logprobs = torch.stack([step[0] for step in out.logits]).float().log_softmax(-1).cpu()
    return out.sequences[0].clone().cpu(), logprobs


def _trim(seq: torch.Tensor, n_prompt: int, eos: int | None) -> torch.Tensor:
    """Drop anything after the first generated EOS (kept)."""
    if eos is None:
        return seq
    hits = (seq[n_prompt:] == eos).nonzero()
    return seq if len(hits) == 0 else seq[: n_prompt + int(hits[0]) + 1]


def _row_metrics(
    model: Any, readout: FeatureReadout, seq: torch.Tensor, logprobs: torch.Tensor, n_prompt: int,
    target_text: str | None, ids: list[int] | None,
) -> dict[str, Any]:
    """expression, target_rate, target_logprob and the text of one generation."""
    expression, _ = readout(seq.unsqueeze(0).to(model.cfg.device))
    n_gen = seq.shape[0] - n_prompt
    text = model.tokenizer.decode(seq[n_prompt:].tolist()) if model.tokenizer is not None else ""
    row: dict[str, Any] = {
        "n_generated": n_gen,
        "expression": float(expression[0, n_prompt:].mean()) if n_gen else math.nan,
        "text": text,
    }
    if target_text is not None:
        row["target_rate"] = count_rate(text, target_text, n_gen)
    if ids is not None:
        steps = logprobs[:n_gen]
        row["target_logprob"] = float(steps[:, ids].logsumexp(-1).mean()) if n_gen else math.nan
    return row


def _prompt_rows(
    model: Any, tokens: torch.Tensor, p_idx: int, label: str, gates: dict[str, Any], steering: SteeringSpec,
    strength: float, readout: FeatureReadout, max_new_tokens: int, eos: int | None, target_text: str | None,
    ids: list[int] | None,
) -> list[dict[str, Any]]:
    """One prompt's rows: its unsteered continuation, then one steered continuation per gate compared with it."""
    from r1_plugin.steering import steer

    n_prompt = tokens.shape[1]
    base_seq, base_lp = _generate(model, tokens, max_new_tokens)
    base_seq = _trim(base_seq, n_prompt, eos)
    base = _row_metrics(model, readout, base_seq, base_lp, n_prompt, target_text, ids)
    base_gen = base_seq[n_prompt:].tolist()
    rows: list[dict[str, Any]] = [
        {"prompt_index": p_idx, "prompt": label, "condition": "unsteered", "gate": "", "open_at": None,
         "close_at": None, "n_steered": 0, **base, "diverged": False, "first_diff": math.nan, "edit_distance": 0}
    ]
    for name, gate in gates.items():
        with steer(model, gate=gate, strength=strength, warn_never_opened=False,
                   **steering.steer_kwargs()) as result:
            seq, lp = _generate(model, tokens, max_new_tokens)
        seq = _trim(seq, n_prompt, eos)
        rec = result.last
        open_at, close_at, n_steered = rec.open_at[0], rec.close_at[0], rec.n_steered[0]
        row = _row_metrics(model, readout, seq, lp, n_prompt, target_text, ids)
        gen = seq[n_prompt:].tolist()
        diff = first_difference(base_gen, gen)
        rows.append({"prompt_index": p_idx, "prompt": label, "condition": name, "gate": repr(gate),
                     "open_at": open_at, "close_at": close_at, "n_steered": n_steered, **row,
                     "diverged": diff is not None, "first_diff": math.nan if diff is None else diff,
                     "edit_distance": edit_distance(base_gen, gen)})
    return rows


def _with_effects(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with `<metric>_effect` = steered - the same prompt's unsteered value, for each measured metric."""
    for metric in ("expression", "target_rate", "target_logprob"):
        if metric in table:
            base_of = table[table["condition"] == "unsteered"].set_index("prompt_index")[metric]
            table[f"{metric}_effect"] = table[metric] - table["prompt_index"].map(base_of)
    return table


def prefix_gating(
    model: Any,
    prompts: str | torch.Tensor | Sequence[str | torch.Tensor],
    *,
    sae: Any = None,
    feature: int | Sequence[int] | None = None,
    direction: Any = None,
    hook_name: str | None = None,
    strength: float = 8.0,
    mode: str = "add",
    normalize: bool = False,
    relative: bool = False,
    conditions: Mapping[str, Any] | None = None,
    spec: ResponsePrefixSpec | None = None,
    target_text: str | None = None,
    target_tokens: str | Sequence[int] | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    tracker: Any = None,
    steering: SteeringSpec | None = None,
) -> ExperimentResult:
    """Steer the same feature at the same strength under each gate of `conditions` (default: the four of
    `default_conditions`) and measure expression, behaviour and divergence against the unsteered run.

    prompts: user messages (put in R1's chat format when `chat`), R1 chat text, or `[1, seq]` ids.
    Steering: an `sae` + `feature`(s) or a `direction` at `hook_name`, as `steer` takes them.
    spec: where the response prefix ends for the default conditions (`ResponsePrefixSpec`).
    """
    from r1_plugin.steering import as_gate

    steering = steering_spec(steering, sae=sae, feature=feature, direction=direction, hook_name=hook_name, mode=mode,
                            normalize=normalize, relative=relative)
    gates = {name: as_gate(g) for name, g in (conditions or default_conditions(spec)).items()}
    if not gates:
        raise ExperimentError("no conditions given")
    if max_new_tokens < 1:
        raise ExperimentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    readout = FeatureReadout(model, steering)
    ids = target_ids(model, target_tokens)
    eos = eos_id(model)
    rows: list[dict[str, Any]] = []
    for p_idx, prompt in enumerate(prompt_list(prompts)):
        rows += _prompt_rows(model, prompt_tokens(model, prompt, chat), p_idx, prompt_label(model, prompt), gates,
                             steering, strength, readout, max_new_tokens, eos, target_text, ids)
    table = _with_effects(pd.DataFrame(rows))
    steered = table[table["condition"] != "unsteered"].astype({"diverged": float})
    summary = summarize(steered, "condition", [m for m in METRICS if m in steered], n_boot, seed)
    config = dict(experiment=NAME, steering=steering.describe(), hook_name=readout.hook_name, strength=strength,
                  conditions={k: repr(v) for k, v in gates.items()}, target_text=target_text,
                  target_tokens=ids, max_new_tokens=max_new_tokens, n_prompts=int(table["prompt_index"].nunique()),
                  n_boot=n_boot, seed=seed)
    result_obj = ExperimentResult(
        name=NAME, table=table, summary=summary, config=config, notes=list(NOTES), draw=_draw,
        table_columns=["prompt_index", "condition", "open_at", "close_at", "n_steered", "n_generated", "expression",
                       "expression_effect", "target_rate", "target_logprob", "first_diff", "edit_distance", "text"],
    )
    if tracker is not None:
        result_obj.log(tracker)
    return result_obj


def _draw(result: ExperimentResult, fig: Any) -> None:
    """One panel per effect metric: mean per condition with its bootstrap CI."""
    metrics = [m for m in ("expression_effect", "target_rate_effect", "target_logprob_effect", "edit_distance")
               if m in set(result.summary.get("metric", []))]
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        frame = result.summary[result.summary["metric"] == metric]
        x = range(len(frame))
        mean = frame["mean"].to_numpy()
        err = [mean - frame["ci_low"].to_numpy(), frame["ci_high"].to_numpy() - mean]
        ax.bar(x, mean, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(list(x))
        ax.set_xticklabels([str(c).replace("_", "\n") for c in frame["condition"]], fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"prefix gating: {result.config.get('steering')} x {result.config.get('strength')}", fontsize=10)
