"""Goodfire's R1 observation as one call: is the token that ends R1's response prefix an attention sink?

Goodfire saw sinks at the end of R1's response prefix ("Okay, so the user asked about ..."), not only at the
start of the response: evidence that R1 treats its own prefix as part of the prompt. The prefix end is the one
definition shared with the steering gate, the experiments and the CLI
(`r1_plugin.response_prefix.response_prefix_end`, which reads each token's completed text, so a character split
over byte-level tokens counts once it is whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1_plugin.response_prefix import ResponsePrefixSpec, find_think_start, response_prefix_end
from r1_plugin.sinks._scan import SinkDetectionError
from r1_plugin.sinks.detect import (
    MassiveActivation,
    MassiveActivationReport,
    SinkReport,
    scan_sinks,
)
from r1_plugin.sinks.thresholds import SinkThresholds, resolve_thresholds
from r1_plugin.sinks.tracker import SinkMonitor
from r1_plugin.token_text import text_pieces
from r1_plugin.values import integer

DEFAULT_MAX_NEW_TOKENS = 96  # the prefix is <= 64 tokens (ResponsePrefixSpec.max_tokens) + min_queries after it


@dataclass
class ResponsePrefixSinkCheck:
    """Result of `check_response_prefix_sink`: the prefix-end token next to BOS and the other sinks."""

    prefix_end: int | None
    is_sink: bool
    reason: str
    report: SinkReport
    massive: MassiveActivationReport | None
    tokens: torch.Tensor  # [seq] the token ids analysed (prompt + generated tokens the model ran)
    n_generated: int = 0
    bos_position: int | None = None
    nearby_sinks: list[int] = field(default_factory=list)  # sinks within `window` tokens of the prefix end
    other_sinks: list[int] = field(default_factory=list)  # every other sink except BOS and the prefix end

    @property
    def prefix_end_token(self) -> str | None:
        """Token string at the prefix end."""
        toks = self.report.str_tokens
        return None if self.prefix_end is None or toks is None else toks[self.prefix_end]  # type: ignore[return-value]

    def sink_rate_at(self, position: int | None) -> float | None:
        """sink_rate of `position` (None for None)."""
        return None if position is None else float(self.report.sink_rate[position])

    def norm_ratio_at(self, position: int | None) -> float | None:
        """Max over layers of the residual-norm ratio (norm / layer median) at `position`."""
        if position is None or self.massive is None:
            return None
        return float(self.massive.norm_ratio()[:, position].max())

    def massive_at(self, position: int | None) -> list[MassiveActivation]:
        """Massive activations at `position`."""
        if position is None or self.massive is None:
            return []
        return [h for h in self.massive if h.position == position]

    def rank_of_prefix_end(self) -> int | None:
        """1-based rank of the prefix end's sink_rate among all positions with enough queries."""
        if self.prefix_end is None:
            return None
        ok = self.report.n_queries >= self.report.min_queries
        rates = torch.where(ok, self.report.sink_rate, float("-inf"))
        return int((rates > rates[self.prefix_end]).sum()) + 1

    def summary(self) -> str:
        """Human-readable verdict with the numbers behind it."""
        label = self.report.token_label
        lines = [f"response-prefix end sink: {'YES' if self.is_sink else 'no'} ({self.reason})"]
        for name, pos in (("prefix end", self.prefix_end), ("BOS", self.bos_position)):
            if pos is None:
                continue
            nr = self.norm_ratio_at(pos)
            lines.append(
                f"  {name:10s} pos {pos:5d} {label(pos):>20s} sink_rate {self.sink_rate_at(pos):.3f}"
                + ("" if nr is None else f"  norm ratio {nr:.2f}")
                + f"  massive {len(self.massive_at(pos))}"
            )
        for p in self.other_sinks:
            lines.append(f"  other sink pos {p:5d} {label(p):>20s} sink_rate {self.sink_rate_at(p):.3f}")
        if self.n_generated:
            lines.append(f"  ({self.n_generated} tokens generated with the KV-cache tracker)")
        return "\n".join(lines)

    def to_dataframe(self) -> Any:
        """The per-position sink DataFrame with a `role` column (bos / prefix_end / sink / "") and norm ratios."""
        df = self.report.to_dataframe()
        roles = []
        for p, is_sink in zip(df["position"], df["is_sink"]):
            if p == self.prefix_end:
                roles.append("prefix_end")
            elif p == self.bos_position:
                roles.append("bos")
            else:
                roles.append("sink" if is_sink else "")
        df["role"] = roles
        if self.massive is not None:
            norms = self.massive.norms_dataframe()
            df["norm_ratio_max"] = norms["norm_ratio_max"].to_numpy()
            df["n_massive"] = norms["n_massive"].to_numpy()
        return df

    def save_heatmap(self, path: str | Path, value: str = "sink_rate") -> Path:
        """Heatmap (PNG/HTML by suffix) with the prefix end and BOS marked in red."""
        from r1_plugin.sinks.plotting import save_heatmap

        marked = [p for p in (self.prefix_end, self.bos_position) if p is not None]
        title = f"sinks; prefix end at {self.prefix_end} ({'sink' if self.is_sink else 'not a sink'})"
        return save_heatmap(self.report, path, value=value, marked=marked, title=title)


def _r1_tokens(model: Any, prompt_or_tokens: Any) -> torch.Tensor:
    """[1, seq] ids of R1 chat text (encoded as is: it carries its own BOS) or of a token tensor."""
    from r1_plugin.drive import ModelDriveError, driver

    if not isinstance(prompt_or_tokens, (str, torch.Tensor)):
        raise SinkDetectionError(f"expected R1 chat text or token ids, got {type(prompt_or_tokens).__name__}")
    try:
        return driver(model).prompt_tokens(prompt_or_tokens, chat=False)
    except ModelDriveError as exc:
        raise SinkDetectionError(str(exc)) from exc


def _verdict(report: SinkReport, end: int | None, th: SinkThresholds, max_new_tokens: int) -> tuple[bool, str]:
    """Whether the prefix end `end` is a sink under `th`, and why (or why it cannot be said)."""
    if end is None:
        return False, "no response-prefix end found" + (
            "" if max_new_tokens > 0 else " (max_new_tokens=0: nothing was generated)"
        )
    if int(report.n_queries[end]) < th.min_queries:
        return False, (
            f"only {int(report.n_queries[end])} queries at or after the prefix end (need {th.min_queries}): "
            "raise max_new_tokens"
        )
    is_sink = end in report.sink_positions  # type: ignore[operator]
    return is_sink, (
        f"prefix end pos {end} sink_rate {float(report.sink_rate[end]):.3f} "
        f"{'>=' if is_sink else '<'} {th.min_sink_rate}"
    )


def check_response_prefix_sink(
    model: Any,
    prompt_or_tokens: Any,
    *,
    spec: ResponsePrefixSpec | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    thresholds: SinkThresholds | None = None,
    window: int = 2,
    massive: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
    **deprecated: Any,
) -> ResponsePrefixSinkCheck:
    """Whether the token ending R1's response prefix is an attention sink, next to BOS and the other sinks.

    `prompt_or_tokens`: R1 chat text (e.g. `format_r1_prompt(model, question)`, optionally followed by the
    model's response) or its token ids. When the text does not yet contain a complete response prefix with at
    least `min_queries` tokens after it, the model continues it for up to `max_new_tokens` tokens (greedy unless
    `generate_kwargs` say otherwise) under a `SinkMonitor`, so the statistics cover prompt and generation in one
    KV-cached pass; otherwise the text is scanned as is. `thresholds` defaults to `SinkThresholds()`; the old
    `epsilon=`, `min_queries=`, ... keywords still work for one release, with a DeprecationWarning.
    """
    th = resolve_thresholds(thresholds, deprecated, "check_response_prefix_sink")
    min_queries = th.min_queries
    max_new_tokens = integer("max_new_tokens", max_new_tokens, at_least=0)
    window = integer("window", window, at_least=0)
    spec = spec or ResponsePrefixSpec()
    if model.tokenizer is None:
        raise SinkDetectionError("the response prefix is found from token strings: the model needs a tokenizer")
    ids = _r1_tokens(model, prompt_or_tokens)
    if find_think_start(text_pieces(model.tokenizer, ids[0].tolist()), spec.think_token) is None:
        raise SinkDetectionError(
            f"no {spec.think_token!r} token in the input: pass R1 chat text, e.g. "
            "r1_plugin.format_r1_prompt(model, question) (its tokenizer must know <think> as one token)"
        )
    end = response_prefix_end(model, ids[0], spec, complete=False)
    n_generated = 0
    if (end is None or ids.shape[1] - end < min_queries) and max_new_tokens > 0:
        tracker = SinkMonitor(model, th, track_residual=massive)
        kwargs = {"do_sample": False, "stop_at_eos": True, **(generate_kwargs or {})}
        out = tracker.generate(ids, max_new_tokens=max_new_tokens, **kwargs)
        processed = tracker.tokens(out)
        assert processed is not None
        n_generated = processed.shape[1] - ids.shape[1]
        report = tracker.report(out, batched=False)
        hits = tracker.massive_activations(out, batched=False) if massive else None
        end = response_prefix_end(model, out[0], spec, complete=True)
        if end is not None and end >= processed.shape[1]:
            end = None  # the prefix ended on the last sampled token, which the model never ran
        ids = processed
    else:
        result = scan_sinks(model, ids, thresholds=th, massive=massive, batched=False)
        assert result.sinks is not None
        report, hits = result.sinks, result.massive
        if end is None:
            end = response_prefix_end(model, ids[0], spec, complete=True)

    sinks: list[int] = list(report.sink_positions)  # type: ignore[arg-type]
    bos_id = getattr(model.tokenizer, "bos_token_id", None)
    bos = 0 if bos_id is not None and int(ids[0, 0]) == bos_id else None
    is_sink, reason = _verdict(report, end, th, max_new_tokens)
    nearby = [p for p in sinks if end is not None and p != end and abs(p - end) <= window]
    others = [p for p in sinks if p not in (end, bos)]
    return ResponsePrefixSinkCheck(
        prefix_end=end,
        is_sink=is_sink,
        reason=reason,
        report=report,
        massive=hits,
        tokens=ids[0].cpu(),
        n_generated=n_generated,
        bos_position=bos,
        nearby_sinks=nearby,
        other_sinks=others,
    )
