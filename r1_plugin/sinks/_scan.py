"""The hooks behind the sink detectors: per-position sums reduced inside the forward, never the attention cache.

One `ScanState` serves the one-shot detectors (a forward run in query chunks over a KV cache) and the generation
tracker (the decode steps of `model.generate`). Its hooks use only TransformerLens hook names
(`blocks.{l}.attn.hook_pattern`, `blocks.{l}.hook_resid_post`), so they work on any HookedTransformer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from r1_plugin.errors import R1PluginError

PATTERN_HOOK = re.compile(r"^blocks\.(\d+)\.attn\.hook_pattern$")
RESID_HOOK = "blocks.{layer}.hook_resid_post"

# Log2-magnitude histogram used for the median when a layer's hidden state is seen in several pieces.
HIST_LOG2_MIN = -40.0
HIST_LOG2_MAX = 40.0
HIST_BINS = 1 << 14  # bin width 80 / 16384 log2 units: the median is within 0.17% (half a bin) of the exact one


class SinkDetectionError(R1PluginError, ValueError):
    """A sink/massive-activation scan that cannot run as asked (bad input, wrong generate settings, ...)."""


def pattern_layers(model: Any) -> list[int]:
    """Indices of the layers whose `blocks.{l}.attn.hook_pattern` exists, sorted; raises if there are none."""
    from r1_plugin.drive import ModelDriveError, driver

    try:
        layers = sorted(driver(model).pattern_hook_names())
    except ModelDriveError as exc:
        raise SinkDetectionError(f"the sink detector reads blocks.<l>.attn.hook_pattern hooks: {exc}") from exc
    if not layers:
        raise SinkDetectionError(
            f"{type(model).__name__} has no blocks.<l>.attn.hook_pattern hook: the sink detector needs a "
            "HookedTransformer or TransformerBridge with attention-pattern hooks"
        )
    return layers


def _grow(t: torch.Tensor, length: int, fill: float | bool | int) -> torch.Tensor:
    """`t` with its last dimension extended to at least `length` (capacity doubles), new cells set to `fill`."""
    cap = t.shape[-1]
    if length <= cap:
        return t
    new_cap = max(length, 2 * cap, 16)
    out = torch.full((*t.shape[:-1], new_cap), fill, dtype=t.dtype, device=t.device)
    out[..., :cap] = t
    return out


class ScanState:
    """What the hooks keep: O(batch x layers x heads x seq) attention sums and O(batch x layers x seq) norms.

    For each key position k it adds up, over every query the model runs, the attention that query pays to k
    (float64), and records which query positions were real (a query row of zeros is padding: TransformerLens
    zeroes fully masked rows). The hidden-state side keeps per-position residual norms, the activations whose
    magnitude passes `min_value` (candidates for Sun et al.'s test) and a log-magnitude histogram per layer for
    the median. The absolute position of a hook call is read off the pattern shape: keys = cached + new queries.
    """

    def __init__(
        self,
        model: Any,
        *,
        track_alpha: bool = True,
        track_residual: bool = False,
        min_value: float = 100.0,
        query_mask: torch.Tensor | None = None,
    ) -> None:
        """Set up empty state for `model`; buffers are allocated on the first hook call (batch size known).

        `query_mask` [batch, seq] (the attention mask, when known up front) says which query rows are real.
        Without it a row is real when it attends anywhere: TransformerLens masks keys only, so this catches left
        padding (what `generate` uses), not right padding, whose pad queries still attend to earlier tokens.
        """
        self.model = model
        self.layers = pattern_layers(model)
        self.n_layers = len(self.layers)
        self._layer_index = {layer: i for i, layer in enumerate(self.layers)}
        self.track_alpha = track_alpha
        self.track_residual = track_residual
        self.min_value = float(min_value)
        self.length = 0  # positions processed as queries so far
        self.query_mask = None if query_mask is None else query_mask.bool()
        self._mask_has_pad = self.query_mask is not None and not bool(self.query_mask.all())
        self.batch: int | None = None
        self.n_heads: int | None = None
        self.device: torch.device | None = None
        self.colsum: torch.Tensor | None = None  # [batch, layer, head, cap] float64
        self.qvalid: torch.Tensor | None = None  # [batch, cap] bool
        self.norms: torch.Tensor | None = None  # [batch, layer, cap] float64
        self.hist: torch.Tensor | None = None  # [batch, layer, HIST_BINS] int64
        self.candidates: list[torch.Tensor] = []  # rows (batch, layer, position, dim, value) as float64
        self.exact_median: torch.Tensor | None = None  # [batch, layer], from a call that saw positions 0..len
        self.exact_median_length: list[int] = []
        self.resid_calls = [0] * self.n_layers
        self._offset: dict[int, int] = {}
        # Measurements for the memory bound: the largest attention tensor any hook saw, in elements.
        self.max_pattern_numel = 0

    # --- allocation ------------------------------------------------------------------------------------------
    def _init_buffers(self, batch: int, n_heads: int, device: torch.device) -> None:
        """Allocate the per-position buffers once the batch size, head count and device are known."""
        self.batch, self.n_heads, self.device = batch, n_heads, device
        self.qvalid = torch.zeros((batch, 0), dtype=torch.bool, device=device)
        if self.track_alpha:
            self.colsum = torch.zeros((batch, self.n_layers, n_heads, 0), dtype=torch.float64, device=device)
        if self.track_residual:
            self.norms = torch.full((batch, self.n_layers, 0), float("nan"), dtype=torch.float64, device=device)
            self.hist = torch.zeros((batch, self.n_layers, HIST_BINS), dtype=torch.int64, device=device)
            self.exact_median = torch.full((batch, self.n_layers), float("nan"), dtype=torch.float64, device=device)
            self.exact_median_length = [0] * self.n_layers

    def kept_numel(self) -> int:
        """Elements held by the accumulators now (the O(layers x heads x seq) part of the memory bound)."""
        tensors = [self.colsum, self.qvalid, self.norms, self.hist, self.exact_median, *self.candidates]
        return sum(t.numel() for t in tensors if t is not None)

    # --- hooks -----------------------------------------------------------------------------------------------
    def _pattern_hook(self, layer: int) -> Callable[[torch.Tensor, Any], None]:
        """Hook on `blocks.{layer}.attn.hook_pattern` [batch, head, query, key]: add column sums, then drop it."""
        li = self._layer_index[layer]
        first = li == 0

        def hook(pattern: torch.Tensor, hook: Any) -> None:
            batch, n_heads, n_q, n_k = pattern.shape
            offset = n_k - n_q
            self.max_pattern_numel = max(self.max_pattern_numel, pattern.numel())
            if self.batch is None:
                self._init_buffers(batch, n_heads, pattern.device)
            elif batch != self.batch or n_heads != self.n_heads:
                raise SinkDetectionError(
                    f"layer {layer}: pattern of shape {tuple(pattern.shape)} does not match batch {self.batch} and "
                    f"{self.n_heads} heads seen before (use a new detector/tracker per input)"
                )
            if first:
                if offset != self.length:
                    raise SinkDetectionError(
                        f"a forward starting at position {offset} after {self.length} processed positions: the "
                        "tracker needs each position run exactly once, i.e. generate(..., use_past_kv_cache=True) "
                        "and a fresh tracker (or .reset()) per generate call"
                    )
                self.qvalid = _grow(self.qvalid, n_k, False)
                if self.query_mask is not None:
                    rows = self.query_mask[:, offset:n_k]
                else:
                    rows = pattern[:, 0].detach().sum(dim=-1) > 0  # [batch, q]: a real query attends somewhere
                self.qvalid[:, offset:n_k] = rows.to(self.device)
                self.length = n_k
            self._offset[li] = offset
            if self.track_alpha:
                assert self.colsum is not None and self.qvalid is not None
                self.colsum = _grow(self.colsum, n_k, 0.0)
                pattern = pattern.detach()
                if self._mask_has_pad:  # right-padding queries attend to real keys: drop their rows
                    pattern = pattern * self.qvalid[:, None, offset:n_k, None].to(pattern.device, pattern.dtype)
                sums = pattern.sum(dim=2, dtype=torch.float64)  # [batch, head, key]
                self.colsum[:, li, :, :n_k] += sums.to(self.device)

        return hook

    def _resid_hook(self, layer: int) -> Callable[[torch.Tensor, Any], None]:
        """Hook on `blocks.{layer}.hook_resid_post` [batch, pos, d_model]: norms, candidates, histogram."""
        li = self._layer_index[layer]

        def hook(resid: torch.Tensor, hook: Any) -> None:
            assert self.norms is not None and self.hist is not None and self.qvalid is not None
            offset = self._offset[li]
            batch, n_q, d_model = resid.shape
            x = resid.detach().to(self.device)
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            valid = self.qvalid[:, offset : offset + n_q]  # [batch, q]
            self.norms = _grow(self.norms, offset + n_q, float("nan"))
            norms = torch.linalg.vector_norm(x.double(), dim=-1)
            self.norms[:, li, offset : offset + n_q] = torch.where(valid, norms, float("nan"))
            mag = x.abs()
            keep = (mag > self.min_value) & valid[..., None]
            if bool(keep.any()):
                b, q, d = keep.nonzero(as_tuple=True)
                cols = [b, torch.full_like(b, li), q + offset, d]
                rows = torch.stack([*(c.double() for c in cols), x[b, q, d].double()], dim=1)
                self.candidates.append(rows)
            logm = torch.log2(mag.clamp_min(2.0**HIST_LOG2_MIN))
            bins = ((logm - HIST_LOG2_MIN) * (HIST_BINS / (HIST_LOG2_MAX - HIST_LOG2_MIN))).long()
            bins = bins.clamp_(0, HIST_BINS - 1)
            bins = bins + (torch.arange(batch, device=self.device) * HIST_BINS)[:, None, None]
            counts = torch.bincount(bins[valid[..., None].expand_as(bins)], minlength=batch * HIST_BINS)
            self.hist[:, li] += counts.view(batch, HIST_BINS)
            if offset == 0:  # the whole hidden state so far is here: keep its exact (lower) median
                assert self.exact_median is not None
                masked = torch.where(valid[..., None], mag, float("nan")).reshape(batch, -1)
                self.exact_median[:, li] = torch.nanmedian(masked, dim=1).values.double()
                self.exact_median_length[li] = n_q
            self.resid_calls[li] += 1

        return hook

    def fwd_hooks(self) -> list[tuple[str, Callable[[torch.Tensor, Any], None]]]:
        """(hook name, function) pairs for `model.hooks(fwd_hooks=...)`."""
        hooks: list[tuple[str, Callable[[torch.Tensor, Any], None]]] = [
            (f"blocks.{layer}.attn.hook_pattern", self._pattern_hook(layer)) for layer in self.layers
        ]
        if self.track_residual:
            from r1_plugin.drive import HookNameError, driver

            drv = driver(self.model)
            for layer in self.layers:
                try:
                    name = drv.resid_post_name(layer)
                except HookNameError as exc:
                    raise SinkDetectionError(str(exc)) from exc
                hooks.append((name, self._resid_hook(layer)))
        return hooks

    # --- results ---------------------------------------------------------------------------------------------
    def check_ran(self) -> None:
        """Raise if no forward has been seen."""
        if self.batch is None or self.length == 0:
            raise SinkDetectionError("no forward pass was recorded (nothing ran with the hooks attached)")

    def valid(self) -> torch.Tensor:
        """[batch, seq] bool: real (non-padding) positions among those processed."""
        self.check_ran()
        assert self.qvalid is not None
        return self.qvalid[:, : self.length]

    def n_queries(self) -> torch.Tensor:
        """[batch, seq] int64: number of real queries i >= k for each key position k."""
        valid = self.valid().long()
        return valid.flip(-1).cumsum(-1).flip(-1)

    def alpha(self) -> torch.Tensor:
        """[batch, layer, head, seq] float64: Gu et al.'s alpha; NaN at padding positions."""
        self.check_ran()
        assert self.colsum is not None
        n = self.n_queries()
        ok = self.valid() & (n > 0)
        out = self.colsum[..., : self.length] / n.clamp_min(1)[:, None, None, :].double()
        return torch.where(ok[:, None, None, :], out, float("nan"))

    def medians(self) -> tuple[torch.Tensor, bool]:
        """[batch, layer] median |activation| of each layer's hidden state, and whether it is exact.

        Exact (torch's lower median) when one forward covered the whole sequence; otherwise read from the
        log-magnitude histogram, within half a bin (0.17%) of the exact value.
        """
        self.check_ran()
        assert self.hist is not None and self.exact_median is not None
        exact = all(n == self.length and c == 1 for n, c in zip(self.exact_median_length, self.resid_calls))
        if exact:
            return self.exact_median.clone(), True
        total = self.hist.sum(-1)  # [batch, layer]
        rank = (total - 1).clamp_min(0) // 2  # 0-based rank of the lower median
        cum = self.hist.cumsum(-1)
        idx = torch.searchsorted(cum, (rank + 1)[..., None].contiguous()).squeeze(-1).clamp_max(HIST_BINS - 1)
        width = (HIST_LOG2_MAX - HIST_LOG2_MIN) / HIST_BINS
        med = torch.exp2(HIST_LOG2_MIN + (idx.double() + 0.5) * width)
        return torch.where(total > 0, med, float("nan")), False

    def candidate_rows(self) -> torch.Tensor:
        """[n, 5] float64 rows (batch, layer index, position, dim, value) with |value| > min_value."""
        if not self.candidates:
            return torch.zeros((0, 5), dtype=torch.float64)
        return torch.cat(self.candidates).cpu()


def run_chunked(
    model: Any,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    state: ScanState,
    chunk_size: int | None,
) -> None:
    """Run `model` on `tokens` with `state`'s hooks, in query chunks of `chunk_size` over a KV cache.

    One chunk (chunk_size None or >= seq) is a plain forward. Several chunks go through the model's KV cache
    (`r1_plugin.drive.Driver.run_chunked`: TransformerLens's, the latent cache for the DeepSeek-V3
    HookedTransformer, or transformers' own under a bridge): chunk c's queries attend to all earlier keys exactly
    as in the full causal forward, so every attention row is computed once, but each layer only ever materialises [batch, head, chunk, seq]
    scores instead of [batch, head, seq, seq].
    """
    from r1_plugin.drive import driver

    if chunk_size is not None and chunk_size < 1:
        raise SinkDetectionError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    drv = driver(model)
    seq = tokens.shape[1]
    with torch.no_grad(), model.hooks(fwd_hooks=state.fwd_hooks()):
        if chunk_size is None or seq <= chunk_size:
            model(tokens, attention_mask=attention_mask, return_type=None)
            return
        drv.run_chunked(tokens, attention_mask, chunk_size)

