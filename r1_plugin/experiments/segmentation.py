"""Goodfire's third R1 claim as an experiment: the SAE feature distribution shifts between the prompt, the response
prefix, the thinking trace and the answer.

Each trace (a prompt continued greedily by the model, or a finished R1 text) is split by token position:

- prompt: from the start through `<think>` and the whitespace-only tokens right after it;
- response_prefix: from there through the token that ends the prefix
  (`r1_plugin.response_prefix.response_prefix_end`, `complete=True`);
- thinking: after the prefix through the `</think>` token;
- answer: after `</think>` to the end (EOS included).

Over all tokens of a segment, pooled across traces: frequency[s, f] = share of the segment's tokens where feature
f is active (> 0) and mean_activation[s, f] = its mean activation (zeros included). A feature distinguishes
segment s by score = frequency[s, f] - frequency[rest, f] (rest: the tokens of the other segments). The
divergence between two segments is the Jensen-Shannon divergence (base 2, in [0, 1]) between their firing-rate
vectors normalised to sum to 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from r1_plugin.experiments.base import (
    ExperimentError,
    ExperimentResult,
    prompt_label,
    prompt_list,
    prompt_tokens,
    trace,
)
from r1_plugin.response_prefix import (
    THINK_CLOSE,
    THINK_TOKEN,
    ResponsePrefixSpec,
    find_think_start,
    response_prefix_end,
)
from r1_plugin.saes.sae_devices import encode_on_sae

NAME = "segments"
SEGMENTS = ("prompt", "response_prefix", "thinking", "answer")
NOTES = (
    "frequency: share of a segment's tokens (pooled over traces) where the feature is active (> 0); "
    "mean_activation: its mean activation there, zeros included.",
    "score = frequency in the segment - frequency in the other segments' tokens; the top features per "
    "segment are in `top_features`.",
    "js_divergence: Jensen-Shannon divergence (bits, 0 = same, 1 = disjoint) between two segments' firing-rate "
    "vectors normalised to sum to 1. Goodfire's claim predicts clearly non-zero values between prompt, "
    "thinking and answer.",
)


def segment_labels(
    str_tokens: Sequence[str], prefix_end: int | None, think_token: str = THINK_TOKEN, think_close: str = THINK_CLOSE
) -> np.ndarray:
    """Per token, the index into SEGMENTS of its segment (see the module docstring), given the position of the
    token that ends the response prefix (`response_prefix_end(..., complete=True)`; None: the prefix runs to the
    end). Needs a `<think>` token."""
    n = len(str_tokens)
    think = find_think_start(str_tokens, think_token)
    if think is None:
        raise ExperimentError(f"no {think_token!r} token in the trace: segments need R1 chat text")
    start = think + 1
    while start < n and not str_tokens[start].strip():
        start += 1  # the template's newline(s) after <think> belong to the prompt
    end = n - 1 if prefix_end is None else prefix_end
    if not think < end < n:
        raise ExperimentError(f"the response prefix end {prefix_end} is not after {think_token!r} at {think}")
    close = next((p for p in range(end + 1, n) if str_tokens[p] == think_close), n - 1)
    labels = np.full(n, 3, dtype=np.int64)
    labels[: close + 1] = 2
    labels[: end + 1] = 1
    labels[:start] = 0
    return labels


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits of two non-negative vectors normalised to distributions (NaN if either
    is all zero)."""
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def _accumulate(
    model: Any, prompts: Any, sae: Any, hook: str, ids: list[int], chat: bool, max_new_tokens: int, generate: bool,
    spec: ResponsePrefixSpec,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Run each trace once and pool per segment: (token counts `[seg]`, active counts and activation sums
    `[seg, len(ids)]`, float64) and one row per trace."""
    index = torch.tensor(ids)
    n_seg = len(SEGMENTS)
    counts = torch.zeros(n_seg, dtype=torch.float64)
    fired = torch.zeros(n_seg, len(ids), dtype=torch.float64)
    summed = torch.zeros(n_seg, len(ids), dtype=torch.float64)
    rows = []
    for p_idx, prompt in enumerate(prompt_list(prompts)):
        tokens = prompt_tokens(model, prompt, chat)
        seq = trace(model, tokens, max_new_tokens, generate)
        end = response_prefix_end(model, seq[0], spec, complete=True)
        labels = torch.from_numpy(segment_labels(model.to_str_tokens(seq[0]), end, spec.think_token))
        with torch.no_grad():
            _, cache = model.run_with_cache(seq, names_filter=[hook])
            feats = encode_on_sae(sae, cache[hook][0])[:, index.to(cache[hook].device)].double().cpu()
        counts += torch.bincount(labels, minlength=n_seg).double()
        fired.index_add_(0, labels, (feats > 0).double())
        summed.index_add_(0, labels, feats)
        sizes = torch.bincount(labels, minlength=n_seg).tolist()
        rows.append({"prompt_index": p_idx, "prompt": prompt_label(model, prompt), "n_tokens": int(seq.shape[1]),
                     **{f"n_{s}": int(k) for s, k in zip(SEGMENTS, sizes)},
                     "text": model.tokenizer.decode(seq[0].tolist())})
    return counts, fired, summed, rows


def _top_features(counts: torch.Tensor, fired: torch.Tensor, freq: np.ndarray, mean_act: np.ndarray,
                  ids: list[int], top_k: int) -> pd.DataFrame:
    """Per present segment, the `top_k` features by frequency there minus frequency in the other segments."""
    top_rows = []
    for s in [s for s in range(len(SEGMENTS)) if counts[s] > 0]:
        rest = counts.sum() - counts[s]
        rest_freq = ((fired.sum(0) - fired[s]) / rest).numpy() if rest > 0 else np.zeros(len(ids))
        score = freq[s] - rest_freq
        order = np.argsort(-score, kind="stable")[:top_k]
        for rank, j in enumerate(order, start=1):
            top_rows.append({"segment": SEGMENTS[s], "rank": rank, "feature": ids[j], "score": float(score[j]),
                             "frequency": float(freq[s, j]), "frequency_rest": float(rest_freq[j]),
                             "mean_activation": float(mean_act[s, j])})
    return pd.DataFrame(top_rows)


def _segment_summary(counts: torch.Tensor, fired: torch.Tensor, summed: torch.Tensor,
                     per_trace: pd.DataFrame) -> pd.DataFrame:
    """Per segment: pooled tokens, traces that have it, mean active features and mean activation per token."""
    return pd.DataFrame([
        {"segment": SEGMENTS[s], "n_tokens": int(counts[s]),
         "n_traces": int((per_trace[f"n_{SEGMENTS[s]}"] > 0).sum()),
         "mean_active_features": float(fired[s].sum() / counts[s]) if counts[s] > 0 else math.nan,
         "mean_activation": float(summed[s].sum() / counts[s]) if counts[s] > 0 else math.nan}
        for s in range(len(SEGMENTS))
    ])


def segments(
    model: Any,
    prompts: str | torch.Tensor | Sequence[str | torch.Tensor],
    *,
    sae: Any,
    features: Sequence[int] | None = None,
    max_new_tokens: int = 256,
    generate: bool = True,
    top_k: int = 10,
    chat: bool = True,
    spec: ResponsePrefixSpec | None = None,
    tracker: Any = None,
) -> ExperimentResult:
    """Per-segment feature frequency and mean activation, the top distinguishing features per segment and the
    Jensen-Shannon divergence between segments, over the traces of `prompts`.

    prompts: user messages (R1 chat format when `chat`) or R1 chat text / `[1, seq]` ids. With `generate` each is
    continued greedily by the model for up to `max_new_tokens` (stopping at EOS); with `generate=False` they are
    finished traces used as they are. `features`: restrict the statistics to these SAE features (default: all).
    """
    from r1_plugin.steering import sae_hook_name
    from r1_plugin.steering.steer import resolve_hook_name

    if sae is None:
        raise ExperimentError("segments needs an SAE")
    if model.tokenizer is None:
        raise ExperimentError("segments finds `<think>`/`</think>` from token strings: the model needs a tokenizer")
    hook = resolve_hook_name(model, sae_hook_name(sae))
    d_sae = int(sae.W_dec.shape[0])
    ids = list(range(d_sae)) if features is None else [int(f) for f in features]
    if not ids or any(not 0 <= f < d_sae for f in ids):
        raise ExperimentError(f"features must be ids in [0, {d_sae}), got {features}")
    spec = spec or ResponsePrefixSpec()
    counts, fired, summed, rows = _accumulate(model, prompts, sae, hook, ids, chat, max_new_tokens, generate, spec)
    n_seg = len(SEGMENTS)
    per_trace = pd.DataFrame(rows)
    denom = counts.clamp(min=1).unsqueeze(1)
    freq = (fired / denom).numpy()
    mean_act = (summed / denom).numpy()
    top = _top_features(counts, fired, freq, mean_act, ids, top_k)
    js = pd.DataFrame(
        [[js_divergence(freq[a], freq[b]) if counts[a] > 0 and counts[b] > 0 else math.nan for b in range(n_seg)]
         for a in range(n_seg)],
        index=list(SEGMENTS), columns=list(SEGMENTS),
    )
    shown = sorted({int(f) for f in top["feature"]}) if len(top) else []
    col = {f: j for j, f in enumerate(ids)}
    table = pd.DataFrame([
        {"feature": f, "segment": SEGMENTS[s], "frequency": float(freq[s, col[f]]),
         "mean_activation": float(mean_act[s, col[f]])}
        for f in shown for s in range(n_seg)
    ])
    seg_summary = _segment_summary(counts, fired, summed, per_trace)
    pairs = pd.DataFrame([
        {"segment_a": SEGMENTS[a], "segment_b": SEGMENTS[b], "js_divergence": float(js.iloc[a, b])}
        for a in range(n_seg) for b in range(a + 1, n_seg)
    ])
    config = dict(experiment=NAME, hook_name=hook, n_features=len(ids), top_k=top_k, generate=generate,
                  max_new_tokens=max_new_tokens, n_prompts=len(per_trace), prefix_end=spec.end,
                  prefix_max_tokens=spec.max_tokens)
    result = ExperimentResult(
        name=NAME, table=table, summary=pairs, config=config, notes=list(NOTES), draw=_draw,
        tables={"segments": seg_summary, "top_features": top, "traces": per_trace.drop(columns=["text"])},
        arrays={"frequency": freq, "mean_activation": mean_act, "features": ids, "counts": counts.numpy(),
                "js": js.to_numpy()},
        summary_title="Jensen-Shannon divergence between segments (firing rates)", summary_value="js_divergence",
    )
    if tracker is not None:
        result.log(tracker)
    return result


def _draw(result: ExperimentResult, fig: Any) -> None:
    """Heatmap of firing frequency, features (union of the top features) x segments, and the JS matrix."""
    table = result.table
    ax_heat, ax_js = fig.subplots(1, 2, width_ratios=[3, 1.4])
    if len(table):
        grid = table.pivot(index="feature", columns="segment", values="frequency")[list(SEGMENTS)]
        im = ax_heat.imshow(grid.to_numpy().T, aspect="auto", cmap="viridis", vmin=0)
        ax_heat.set_yticks(range(len(SEGMENTS)))
        ax_heat.set_yticklabels(SEGMENTS, fontsize=8)
        step = max(1, len(grid) // 40)
        ax_heat.set_xticks(range(0, len(grid), step))
        ax_heat.set_xticklabels([str(f) for f in grid.index[::step]], rotation=90, fontsize=6)
        ax_heat.set_xlabel("feature (top distinguishing features of each segment)")
        fig.colorbar(im, ax=ax_heat, label="firing frequency")
    ax_heat.set_title("feature firing frequency per segment", fontsize=9)
    js = np.asarray(result.arrays.get("js", np.full((4, 4), np.nan)), dtype=float)
    im2 = ax_js.imshow(js, cmap="magma", vmin=0, vmax=1)
    ax_js.set_xticks(range(len(SEGMENTS)))
    ax_js.set_yticks(range(len(SEGMENTS)))
    ax_js.set_xticklabels([s.replace("_", "\n") for s in SEGMENTS], fontsize=7)
    ax_js.set_yticklabels(SEGMENTS, fontsize=7)
    for a in range(js.shape[0]):
        for b in range(js.shape[1]):
            if not math.isnan(js[a, b]):
                ax_js.text(b, a, f"{js[a, b]:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax_js.set_title("Jensen-Shannon divergence (bits)", fontsize=9)
    fig.colorbar(im2, ax=ax_js)
