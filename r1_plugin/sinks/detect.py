"""Attention sinks (Gu et al. 2024) and massive activations (Sun et al. 2024), found from hooks in one pass.

`alpha[l, h, k]` is the mean attention that key position k receives from the queries i >= k (causal), and
`sink_rate[k]` the fraction of (layer, head) pairs with `alpha > epsilon` (0.3 in Gu et al.). An activation of
the hidden state after block l (`blocks.{l}.hook_resid_post`, HF `hidden_states[l + 1]`) is massive when its
magnitude exceeds `min_value` (100) and `min_ratio` (1000) times the median magnitude of that hidden state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch

from r1_plugin.sinks._scan import ScanState, SinkDetectionError, run_chunked
from r1_plugin.sinks.thresholds import (  # noqa: F401  (the DEFAULT_* names stay importable from here)
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EPSILON,
    DEFAULT_MIN_QUERIES,
    DEFAULT_MIN_RATIO,
    DEFAULT_MIN_SINK_RATE,
    DEFAULT_MIN_VALUE,
    SinkThresholds,
    resolve_thresholds,
)


# --- input handling -------------------------------------------------------------------------------------------
def prepare_tokens(
    model: Any,
    tokens: Any,
    attention_mask: torch.Tensor | None = None,
    batched: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(tokens [batch, seq], attention mask [batch, seq], batched) for a str, list of str or token tensor.

    A string goes through `r1_plugin.drive` (R1 chat text, i.e. any text containing `<think>`, as is: it carries
    its own BOS; other text with the model's BOS rule). A list of strings is padded and masked as TransformerLens does. `batched` None means:
    batched for a list or a 2-D tensor with more than one row, unbatched for a str, a 1-D tensor or [1, seq].
    """
    if isinstance(tokens, str):
        from r1_plugin.drive import ModelDriveError, driver

        try:
            ids = driver(model).prompt_tokens(tokens, chat=False)
        except ModelDriveError as exc:
            raise SinkDetectionError(str(exc)) from exc
        auto = False
    elif isinstance(tokens, (list, tuple)) and tokens and all(isinstance(t, str) for t in tokens):
        from transformer_lens.utilities.tokenize_utils import get_attention_mask

        ids = model.to_tokens(list(tokens))
        if attention_mask is None and model.tokenizer is not None:
            attention_mask = get_attention_mask(model.tokenizer, ids, model.cfg.default_prepend_bos)
        auto = True
    elif isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dim() not in (1, 2):
            raise SinkDetectionError(
                f"tokens must be integer ids of shape [seq] or [batch, seq], got {tuple(tokens.shape)} {tokens.dtype}"
            )
        ids = tokens if tokens.dim() == 2 else tokens[None]
        auto = tokens.dim() == 2 and tokens.shape[0] > 1
    else:
        raise SinkDetectionError(f"tokens must be a str, a list of str or a token tensor, got {type(tokens).__name__}")
    if ids.shape[1] == 0:
        raise SinkDetectionError("empty input: no tokens")
    is_batched = auto if batched is None else bool(batched)
    if not is_batched and ids.shape[0] != 1:
        raise SinkDetectionError(f"batched=False needs a single sequence, got batch {ids.shape[0]}")
    if attention_mask is None:
        attention_mask = torch.ones_like(ids, dtype=torch.long)
    else:
        attention_mask = attention_mask if attention_mask.dim() == 2 else attention_mask[None]
        if attention_mask.shape != ids.shape:
            raise SinkDetectionError(
                f"attention_mask shape {tuple(attention_mask.shape)} != tokens shape {tuple(ids.shape)}"
            )
    device = model.cfg.device
    return ids.to(device), attention_mask.to(device=device, dtype=torch.long), is_batched


def str_tokens_of(model: Any, tokens: torch.Tensor) -> list[list[str]] | None:
    """Per-row token strings (as TransformerLens decodes them one by one), or None without a tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return None
    return [list(model.to_str_tokens(row)) for row in tokens.cpu()]


def _pick(x: Any, batched: bool) -> Any:
    """x unchanged when batched, else its only row."""
    return x if batched else x[0]


# --- attention sinks ------------------------------------------------------------------------------------------
@dataclass
class SinkReport:
    """Gu et al.'s attention-sink metrics for one sequence (or a batch: every field gets a leading batch dim).

    alpha: [(batch,) n_layers, n_heads, seq] float64, mean attention key k receives from queries i >= k (NaN
        at padding). sink_rate: [(batch,) seq], fraction of (layer, head) pairs with alpha > epsilon.
    sink_positions: positions (list per row when batched) with sink_rate >= min_sink_rate and at least
        min_queries real queries at or after them. n_queries: [(batch,) seq], those query counts.
    """

    alpha: torch.Tensor
    sink_rate: torch.Tensor
    sink_positions: list[int] | list[list[int]]
    n_queries: torch.Tensor
    epsilon: float
    min_sink_rate: float
    min_queries: int
    layers: list[int]
    batched: bool = False
    str_tokens: list[str] | list[list[str]] | None = None
    tokens: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        """Number of layers scanned."""
        return self.alpha.shape[-3]

    @property
    def n_heads(self) -> int:
        """Number of attention (query) heads per layer."""
        return self.alpha.shape[-2]

    @property
    def seq_len(self) -> int:
        """Number of positions."""
        return self.alpha.shape[-1]

    def row(self, batch_index: int = 0) -> SinkReport:
        """The unbatched report of one batch row (itself when unbatched)."""
        if not self.batched:
            if batch_index != 0:
                raise IndexError(f"unbatched report has no row {batch_index}")
            return self
        return SinkReport(
            alpha=self.alpha[batch_index],
            sink_rate=self.sink_rate[batch_index],
            sink_positions=list(self.sink_positions[batch_index]),  # type: ignore[arg-type]
            n_queries=self.n_queries[batch_index],
            epsilon=self.epsilon,
            min_sink_rate=self.min_sink_rate,
            min_queries=self.min_queries,
            layers=self.layers,
            batched=False,
            str_tokens=None if self.str_tokens is None else self.str_tokens[batch_index],  # type: ignore[arg-type]
            tokens=None if self.tokens is None else self.tokens[batch_index],
        )

    def rows(self) -> list[SinkReport]:
        """One unbatched report per batch row."""
        n = self.alpha.shape[0] if self.batched else 1
        return [self.row(i) for i in range(n)]

    def layer_sink_rate(self) -> torch.Tensor:
        """[(batch,) n_layers, seq]: per layer, the fraction of heads with alpha > epsilon (NaN at padding)."""
        rate = (self.alpha > self.epsilon).double().mean(dim=-2)
        return torch.where(self.alpha.isnan().any(dim=-2), float("nan"), rate)

    def layer_values(self, value: str = "sink_rate") -> torch.Tensor:
        """[(batch,) n_layers, seq] per-layer view: "sink_rate", "alpha_mean" or "alpha_max" over heads."""
        if value == "sink_rate":
            return self.layer_sink_rate()
        if value == "alpha_mean":
            return self.alpha.mean(dim=-2)
        if value == "alpha_max":
            return self.alpha.amax(dim=-2)
        raise ValueError(f"value must be 'sink_rate', 'alpha_mean' or 'alpha_max', got {value!r}")

    def token_label(self, position: int, batch_index: int = 0) -> str:
        """Token string at `position` (repr-quoted) or the position number without a tokenizer."""
        toks = self.row(batch_index).str_tokens
        return repr(toks[position]) if toks is not None else str(position)

    def to_dataframe(self) -> Any:
        """pandas DataFrame, one row per (batch, position): token, n_queries, sink_rate, strongest head, is_sink."""
        import pandas as pd

        frames = []
        for b, r in enumerate(self.rows()):
            flat = r.alpha.reshape(-1, r.seq_len)
            filled = torch.nan_to_num(flat, nan=-1.0)
            best = filled.argmax(dim=0)
            sinks = set(r.sink_positions)  # type: ignore[arg-type]
            frames.append(
                pd.DataFrame(
                    {
                        "batch": b,
                        "position": range(r.seq_len),
                        "token": r.str_tokens if r.str_tokens is not None else [None] * r.seq_len,
                        "n_queries": r.n_queries.cpu().numpy(),
                        "sink_rate": r.sink_rate.cpu().numpy(),
                        "alpha_mean": r.alpha.mean(dim=(0, 1)).cpu().numpy(),
                        "alpha_max": flat.amax(dim=0).cpu().numpy(),
                        "alpha_max_layer": [self.layers[int(i) // r.n_heads] for i in best],
                        "alpha_max_head": (best % r.n_heads).cpu().numpy(),
                        "is_sink": [p in sinks for p in range(r.seq_len)],
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def head_dataframe(self) -> Any:
        """Long pandas DataFrame, one row per (batch, layer, head, position) with alpha."""
        import pandas as pd

        alpha = self.alpha if self.batched else self.alpha[None]
        b, n_layers, n_heads, seq = alpha.shape
        idx = torch.cartesian_prod(
            torch.arange(b), torch.tensor(self.layers), torch.arange(n_heads), torch.arange(seq)
        ).numpy()
        return pd.DataFrame(
            {
                "batch": idx[:, 0],
                "layer": idx[:, 1],
                "head": idx[:, 2],
                "position": idx[:, 3],
                "alpha": alpha.reshape(-1).cpu().numpy(),
            }
        )

    def summary(self, batch_index: int = 0, top: int = 10) -> str:
        """A few lines: sink positions with their tokens and rates, strongest first."""
        r = self.row(batch_index)
        order = sorted(r.sink_positions, key=lambda p: -float(r.sink_rate[p]))[:top]  # type: ignore[arg-type]
        lines = [
            f"{len(r.sink_positions)} sink position(s) of {r.seq_len} (epsilon {self.epsilon}, sink_rate >= "
            f"{self.min_sink_rate}, >= {self.min_queries} queries; {self.n_layers} layers x {self.n_heads} heads)"
        ]
        for p in order:
            lines.append(f"  pos {p:5d} {r.token_label(p):>24s}  sink_rate {float(r.sink_rate[p]):.3f}")
        return "\n".join(lines)

    def plot_heatmap(self, batch_index: int = 0, value: str = "sink_rate", max_labels: int = 96) -> Any:
        """Matplotlib figure: layers x positions of `value` (see `layer_values`), token strings on the x axis."""
        from r1_plugin.sinks.plotting import heatmap_figure

        return heatmap_figure(self, batch_index=batch_index, value=value, max_labels=max_labels)

    def to_html(self, batch_index: int = 0, value: str = "sink_rate") -> str:
        """Self-contained HTML: the heatmap as a coloured table (tooltips give the numbers) and the sink list."""
        from r1_plugin.sinks.plotting import heatmap_html

        return heatmap_html(self, batch_index=batch_index, value=value)

    def save_heatmap(self, path: str | Path, batch_index: int = 0, value: str = "sink_rate") -> Path:
        """Write the heatmap to `path`: PNG for .png, HTML for .html/.htm."""
        from r1_plugin.sinks.plotting import save_heatmap

        return save_heatmap(self, path, batch_index=batch_index, value=value)


def sink_report_from_state(
    state: ScanState,
    thresholds: SinkThresholds,
    *,
    batched: bool = True,
    str_tokens: list[list[str]] | None = None,
    tokens: torch.Tensor | None = None,
) -> SinkReport:
    """Turn the hooks' sums into a `SinkReport` (squeezing the batch dim when not `batched`)."""
    epsilon, min_sink_rate, min_queries = thresholds.epsilon, thresholds.min_sink_rate, thresholds.min_queries
    alpha = state.alpha()  # [batch, layer, head, seq]
    n_queries = state.n_queries()
    rate = (alpha > epsilon).double().mean(dim=(1, 2))
    rate = torch.where(state.valid(), rate, float("nan"))
    eligible = state.valid() & (n_queries >= min_queries) & (rate >= min_sink_rate)
    positions = [torch.nonzero(row).flatten().tolist() for row in eligible.cpu()]
    seq = alpha.shape[-1]
    if str_tokens is not None:
        str_tokens = [list(t[:seq]) for t in str_tokens]
    return SinkReport(
        alpha=_pick(alpha.cpu(), batched),
        sink_rate=_pick(rate.cpu(), batched),
        sink_positions=_pick(positions, batched),
        n_queries=_pick(n_queries.cpu(), batched),
        epsilon=float(epsilon),
        min_sink_rate=float(min_sink_rate),
        min_queries=int(min_queries),
        layers=list(state.layers),
        batched=batched,
        str_tokens=None if str_tokens is None else _pick(str_tokens, batched),
        tokens=None if tokens is None else _pick(tokens[:, :seq].cpu(), batched),
    )


# --- massive activations --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MassiveActivation:
    """One massive activation: hidden state after block `layer`, at `position`, feature `dim`."""

    layer: int
    position: int
    dim: int
    value: float
    ratio: float  # |value| / median |activation| of that layer's hidden state
    batch: int = 0
    token: str | None = None


@dataclass
class MassiveActivationReport(Sequence[MassiveActivation]):
    """The massive activations found (a sequence of records) plus the per-position residual-norm view.

    residual_norms: [(batch,) n_layers, seq] L2 norm of each position's hidden state (NaN at padding).
    medians: [(batch,) n_layers] median |activation| per layer; median_exact says whether it is exact (one
    forward over the whole sequence) or from the log-histogram (within 0.17%).
    """

    hits: list[MassiveActivation]
    residual_norms: torch.Tensor
    medians: torch.Tensor
    median_exact: bool
    min_value: float
    min_ratio: float
    layers: list[int]
    batched: bool = False
    str_tokens: list[str] | list[list[str]] | None = None

    @overload
    def __getitem__(self, index: int) -> MassiveActivation: ...

    @overload
    def __getitem__(self, index: slice) -> list[MassiveActivation]: ...

    def __getitem__(self, index: int | slice) -> MassiveActivation | list[MassiveActivation]:
        """The index-th record (sorted by batch, layer, position, dim)."""
        return self.hits[index]

    def __len__(self) -> int:
        """Number of massive activations."""
        return len(self.hits)

    def __iter__(self) -> Iterator[MassiveActivation]:
        """Iterate over the records."""
        return iter(self.hits)

    def norm_ratio(self) -> torch.Tensor:
        """[(batch,) n_layers, seq]: each position's residual norm over that layer's median norm (over positions)."""
        med = self.residual_norms.nanmedian(dim=-1, keepdim=True).values
        return self.residual_norms / med

    def positions(self, batch_index: int = 0) -> list[int]:
        """Sorted positions holding at least one massive activation."""
        return sorted({h.position for h in self.hits if h.batch == batch_index})

    def dims(self, batch_index: int = 0) -> list[int]:
        """Sorted feature dims holding at least one massive activation."""
        return sorted({h.dim for h in self.hits if h.batch == batch_index})

    def to_dataframe(self) -> Any:
        """pandas DataFrame, one row per massive activation."""
        import pandas as pd

        cols = ["batch", "layer", "position", "token", "dim", "value", "ratio"]
        return pd.DataFrame([{c: getattr(h, c) for c in cols} for h in self.hits], columns=cols)

    def norms_dataframe(self) -> Any:
        """pandas DataFrame, one row per (batch, position): residual-norm ratio (max/mean over layers), hits."""
        import pandas as pd

        ratio = self.norm_ratio() if self.batched else self.norm_ratio()[None]
        norms = self.residual_norms if self.batched else self.residual_norms[None]
        toks = self.str_tokens if self.batched else [self.str_tokens] if self.str_tokens is not None else None
        frames = []
        for b in range(ratio.shape[0]):
            seq = ratio.shape[-1]
            filled = torch.nan_to_num(ratio[b], nan=-1.0)
            counts = [0] * seq
            for h in self.hits:
                if h.batch == b:
                    counts[h.position] += 1
            frames.append(
                pd.DataFrame(
                    {
                        "batch": b,
                        "position": range(seq),
                        "token": toks[b] if toks is not None else [None] * seq,  # type: ignore[index]
                        "norm_max": norms[b].amax(dim=0).numpy(),
                        "norm_ratio_max": ratio[b].amax(dim=0).numpy(),
                        "norm_ratio_max_layer": [self.layers[int(i)] for i in filled.argmax(dim=0)],
                        "norm_ratio_mean": ratio[b].mean(dim=0).numpy(),
                        "n_massive": counts,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def summary(self, top: int = 10) -> str:
        """A few lines: the largest massive activations."""
        lines = [
            f"{len(self.hits)} massive activation(s) (|value| > {self.min_value:g} and >= {self.min_ratio:g} x "
            f"layer median; medians {'exact' if self.median_exact else 'from histogram'})"
        ]
        for h in sorted(self.hits, key=lambda h: -abs(h.value))[:top]:
            tok = "" if h.token is None else repr(h.token)
            lines.append(
                f"  batch {h.batch} layer {h.layer:3d} pos {h.position:5d} {tok:>16s} dim {h.dim:6d} "
                f"value {h.value:10.2f} ratio {h.ratio:10.1f}"
            )
        return "\n".join(lines)


def massive_report_from_state(
    state: ScanState,
    thresholds: SinkThresholds,
    *,
    batched: bool = True,
    str_tokens: list[list[str]] | None = None,
) -> MassiveActivationReport:
    """Apply Sun et al.'s two thresholds to the hooks' candidates and build the report."""
    min_value, min_ratio = thresholds.min_value, thresholds.min_ratio
    assert state.norms is not None
    medians, exact = state.medians()
    medians = medians.cpu()
    rows = state.candidate_rows()
    hits: list[MassiveActivation] = []
    seq = state.length
    if str_tokens is not None:
        str_tokens = [list(t[:seq]) for t in str_tokens]
    if rows.shape[0]:
        b, li, pos, dim = (rows[:, i].long() for i in range(4))
        value = rows[:, 4]
        ratio = value.abs() / medians[b, li]
        keep = (value.abs() > min_value) & (ratio >= min_ratio)
        order = sorted(
            torch.nonzero(keep).flatten().tolist(),
            key=lambda i: (int(b[i]), int(li[i]), int(pos[i]), int(dim[i])),
        )
        for i in order:
            bi, p = int(b[i]), int(pos[i])
            hits.append(
                MassiveActivation(
                    layer=state.layers[int(li[i])],
                    position=p,
                    dim=int(dim[i]),
                    value=float(value[i]),
                    ratio=float(ratio[i]),
                    batch=bi,
                    token=None if str_tokens is None else str_tokens[bi][p],
                )
            )
    norms = state.norms[..., :seq].cpu()
    return MassiveActivationReport(
        hits=hits,
        residual_norms=_pick(norms, batched),
        medians=_pick(medians, batched),
        median_exact=exact,
        min_value=float(min_value),
        min_ratio=float(min_ratio),
        layers=list(state.layers),
        batched=batched,
        str_tokens=None if str_tokens is None else _pick(str_tokens, batched),
    )


# --- the API --------------------------------------------------------------------------------------------------
@dataclass
class ScanResult:
    """Both reports from one pass, plus the memory measurements of that pass."""

    sinks: SinkReport | None
    massive: MassiveActivationReport | None
    max_pattern_numel: int  # largest attention tensor a layer materialised during the pass, in elements
    kept_numel: int  # elements the hooks kept at the end (the O(layers x heads x seq) accumulators)
    extra: dict[str, Any] = field(default_factory=dict)


def scan_sinks(
    model: Any,
    tokens: Any,
    *,
    thresholds: SinkThresholds | None = None,
    attention: bool = True,
    massive: bool = True,
    attention_mask: torch.Tensor | None = None,
    batched: bool | None = None,
    **deprecated: Any,
) -> ScanResult:
    """Attention sinks and/or massive activations from a single forward pass run in query chunks.

    `thresholds` (default `SinkThresholds()`) says what counts as a sink or a massive activation and the query
    chunk; the old keywords (`epsilon=`, `min_sink_rate=`, ..., `chunk_size=`) still work for one release, with a
    DeprecationWarning.
    """
    th = resolve_thresholds(thresholds, deprecated, "scan_sinks")
    if not (attention or massive):
        raise SinkDetectionError("nothing to scan: attention and massive are both False")
    ids, mask, is_batched = prepare_tokens(model, tokens, attention_mask, batched)
    state = ScanState(
        model, track_alpha=attention, track_residual=massive, min_value=th.min_value, query_mask=mask
    )
    run_chunked(model, ids, mask, state, th.chunk_size)
    if state.length != ids.shape[1]:
        raise SinkDetectionError(f"the hooks saw {state.length} of {ids.shape[1]} positions")
    str_tokens = str_tokens_of(model, ids)
    sinks = (
        sink_report_from_state(state, th, batched=is_batched, str_tokens=str_tokens, tokens=ids)
        if attention
        else None
    )
    hits = massive_report_from_state(state, th, batched=is_batched, str_tokens=str_tokens) if massive else None
    return ScanResult(sinks, hits, state.max_pattern_numel, state.kept_numel())


def find_attention_sinks(
    model: Any,
    tokens: Any,
    thresholds: SinkThresholds | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    batched: bool | None = None,
    **deprecated: Any,
) -> SinkReport:
    """Gu et al.'s alpha and sink_rate for every position, computed layer by layer from `hook_pattern`.

    Memory: the hooks keep O(batch x layers x heads x seq); the forward runs in query chunks of
    `thresholds.chunk_size` over a KV cache, so no layer materialises more than [batch, heads, chunk_size, seq]
    attention. A number in place of `thresholds` is the old positional epsilon (deprecated).
    """
    if thresholds is not None and not isinstance(thresholds, SinkThresholds):
        deprecated = {"epsilon": thresholds, **deprecated}  # the old signature's third positional argument
        thresholds = None
    th = resolve_thresholds(thresholds, deprecated, "find_attention_sinks")
    report = scan_sinks(
        model, tokens, thresholds=th, massive=False, attention_mask=attention_mask, batched=batched
    ).sinks
    assert report is not None
    return report


def find_massive_activations(
    model: Any,
    tokens: Any,
    *,
    thresholds: SinkThresholds | None = None,
    attention_mask: torch.Tensor | None = None,
    batched: bool | None = None,
    **deprecated: Any,
) -> MassiveActivationReport:
    """Sun et al.'s massive activations in `blocks.{l}.hook_resid_post`: |value| > min_value and >= min_ratio x median."""
    th = resolve_thresholds(thresholds, deprecated, "find_massive_activations")
    result = scan_sinks(
        model, tokens, thresholds=th, attention=False, massive=True, attention_mask=attention_mask, batched=batched
    )
    assert result.massive is not None
    return result.massive
