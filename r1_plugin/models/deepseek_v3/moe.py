"""DeepSeek-V3 MoE: sigmoid router with group-limited top-k, routed experts run grouped by expert, shared experts."""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.hook_points import HookPoint

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.fp8_weights import fp8_parts
from r1_plugin.models.deepseek_v3.mlp import DeepseekV3DenseMLP

# At most this many (token, slot) rows (decode steps of small batches) run as one matmul per expert that received
# rows: grouped_mm's per-call cost over all experts dominates there (measured ~2x slower at 4-8 rows, 256 experts).
SEGMENT_LOOP_MAX_ROWS = 16

logger = logging.getLogger(__name__)

# The dtypes torch's grouped_mm multiplies; others (float64) take the per-expert loop without trying.
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# torch's own words when grouped_mm refuses an operand's memory layout (strides or offset not 16-byte aligned):
# that call takes the per-expert loop; every other RuntimeError (out of memory above all) propagates.
_LAYOUT_ERRORS = (
    "strides should be multiple of 16 bytes", "Invalid strides/sizes", "storage offset to be a multiple of 16 bytes",
)
# Device types with no grouped_mm kernel (it raised NotImplementedError): the per-expert loop there from then on.
_GROUPED_MM_UNSUPPORTED: set[str] = set()
_LAYOUTS_REPORTED: set[tuple[str, torch.dtype, str]] = set()


def _grouped_mm_failed(exc: RuntimeError | NotImplementedError, x: torch.Tensor, weight: torch.Tensor) -> None:
    """Decide what a grouped_mm failure means: no kernel on this device (warned once, fast path off there for the
    process), an unsupported layout (said once at INFO, this call only), or anything else (re-raised)."""
    if isinstance(exc, NotImplementedError):
        _GROUPED_MM_UNSUPPORTED.add(x.device.type)
        warnings.warn(
            f"torch.nn.functional.grouped_mm has no kernel for {x.device.type} ({str(exc).splitlines()[0][:160]}); "
            "DeepSeek-V3 MoE layers use one matmul per expert on this device from now on (same numbers, slower).",
            RuntimeWarning, stacklevel=3,
        )
        return
    layout = next((words for words in _LAYOUT_ERRORS if words in str(exc)), None)
    if layout is None:
        raise exc
    key = (x.device.type, x.dtype, layout)
    if key not in _LAYOUTS_REPORTED:
        _LAYOUTS_REPORTED.add(key)
        logger.info("grouped_mm refused the layout of x %s / weight %s strides %s (%s): those experts' matmuls run "
                    "one per expert (same numbers).", tuple(x.shape), tuple(weight.shape), weight.stride(), layout)


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: list[int], offsets: torch.Tensor) -> torch.Tensor:
    """Row block g of x (rows sorted by expert; counts[g] of them) times weight[g]; empty experts cost nothing.

    Uses torch's segmented `grouped_mm` when available, no gradient is needed (its CPU backward is broken in
    torch 2.13) and there are more than SEGMENT_LOOP_MAX_ROWS rows; else one matmul per expert that received
    tokens, on contiguous slices (no gathers).
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    grouped_mm = getattr(F, "grouped_mm", None)
    few_rows = x.shape[0] <= SEGMENT_LOOP_MAX_ROWS  # decode: a handful of rows, most experts empty
    usable = x.dtype in GROUPED_MM_DTYPES and weight.dtype == x.dtype and x.device.type not in _GROUPED_MM_UNSUPPORTED
    if grouped_mm is not None and usable and not needs_grad and not few_rows:
        try:
            return grouped_mm(x, weight, offs=offsets)
        except NotImplementedError as exc:  # no kernel for this device
            _grouped_mm_failed(exc, x, weight)
        except RuntimeError as exc:  # an operand layout grouped_mm refuses; anything else is re-raised
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            _grouped_mm_failed(exc, x, weight)
    out = x.new_empty(x.shape[0], weight.shape[-1])
    start = 0
    for expert, count in enumerate(counts):
        if count:
            out[start : start + count] = x[start : start + count] @ weight[expert]
            start += count
    return out


class DeepseekV3Experts(nn.Module):
    """The routed experts' weights stacked: W_gate/W_in [n_experts, d_model, d_mlp_moe], W_out [.., d_mlp_moe, d_model]."""

    def __init__(self, cfg: DeepseekV3HookedConfig) -> None:
        super().__init__()
        assert cfg.num_experts is not None
        self.cfg = cfg
        e, d, m = cfg.num_experts, cfg.d_model, cfg.d_mlp_moe
        self.W_gate = nn.Parameter(torch.empty(e, d, m, dtype=cfg.dtype))
        self.W_in = nn.Parameter(torch.empty(e, d, m, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(e, m, d, dtype=cfg.dtype))

    def forward(self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [tokens, d_model], indices/weights [tokens, k] -> sum_k weights * expert_k(x), [tokens, d_model].

        The (token, slot) pairs are sorted by expert so each expert reads one contiguous block of rows; the
        results are scattered back by the inverse permutation and summed over the k slots.
        """
        n_tokens, k = indices.shape
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)
        token_of_row = order // k
        counts_t = torch.bincount(flat, minlength=self.cfg.num_experts)  # never self.W_gate: it dequantises
        offsets = counts_t.cumsum(0).to(torch.int32)
        counts = counts_t.tolist()
        rows = x.index_select(0, token_of_row)
        if fp8_parts(self, "W_gate") is not None:
            out = self.fp8_expert_rows(rows, counts_t)
        else:
            hidden = F.silu(grouped_matmul(rows, self.W_gate, counts, offsets)) * grouped_matmul(
                rows, self.W_in, counts, offsets
            )
            out = grouped_matmul(hidden, self.W_out, counts, offsets)
        # Back to (token, slot) order by gathering with the inverse permutation (a gather, not a scatter), then
        # each token's k rows are combined by one batched [1, k] @ [k, d_model] product with its routing weights.
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        per_slot = out.index_select(0, inverse).view(n_tokens, k, -1).to(weights.dtype)
        return torch.bmm(weights[:, None, :], per_slot)[:, 0].to(x.dtype)

    def fp8_expert_rows(self, rows: torch.Tensor, counts_t: torch.Tensor) -> torch.Tensor:
        """Expert outputs for `rows` (sorted by expert) with FP8-kept weights: only experts that received rows are
        dequantised, `cfg.fp8_experts_per_chunk` at a time (transient bound: `fp8_expert_transient_bytes`)."""
        gate, gate_w = fp8_parts(self, "W_gate")  # type: ignore[misc]
        up, up_w = fp8_parts(self, "W_in")  # type: ignore[misc]
        down, down_w = fp8_parts(self, "W_out")  # type: ignore[misc]
        used = counts_t.nonzero().flatten()
        used_counts = counts_t.index_select(0, used).tolist()
        chunk = max(1, int(self.cfg.fp8_experts_per_chunk))
        out = rows.new_empty(rows.shape[0], down.shape[1])
        start = 0
        for c0 in range(0, len(used_counts), chunk):
            ids, counts = used[c0 : c0 + chunk], used_counts[c0 : c0 + chunk]
            n = sum(counts)
            segment = rows[start : start + n]
            offsets = torch.tensor(counts, device=rows.device).cumsum(0).to(torch.int32)
            w_gate = gate_w.to_tl(gate_w.dequantize(gate, ids))
            gated = F.silu(grouped_matmul(segment, w_gate, counts, offsets))
            del w_gate
            w_up = up_w.to_tl(up_w.dequantize(up, ids))
            hidden = gated * grouped_matmul(segment, w_up, counts, offsets)
            del w_up, gated
            w_down = down_w.to_tl(down_w.dequantize(down, ids))
            out[start : start + n] = grouped_matmul(hidden, w_down, counts, offsets)
            del w_down, hidden
            start += n
        return out


class DeepseekV3MoE(nn.Module):
    """Routed experts (sigmoid scores, correction bias for selection only, group-limited top-k) + shared experts."""

    def __init__(self, cfg: DeepseekV3HookedConfig) -> None:
        super().__init__()
        assert cfg.num_experts is not None
        self.cfg = cfg
        # Router weight and correction bias are kept in float32 whatever the model dtype, as transformers does.
        self.W_router = nn.Parameter(torch.empty(cfg.d_model, cfg.num_experts, dtype=torch.float32))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts, dtype=torch.float32))
        self.experts = DeepseekV3Experts(cfg)
        self.shared_experts = (
            DeepseekV3DenseMLP(cfg, d_mlp=cfg.d_mlp_moe * cfg.n_shared_experts) if cfg.n_shared_experts else None
        )
        self.hook_router_logits = HookPoint()  # [batch*pos, n_experts], float32
        self.hook_expert_weights = HookPoint()  # [batch*pos, n_experts], sigmoid scores (before the bias)
        self.hook_expert_indices = HookPoint()  # [batch*pos, k], chosen experts
        self.hook_topk_weights = HookPoint()  # [batch*pos, k], final routing weights (normalised and scaled)
        self.hook_routed_out = HookPoint()  # [batch, pos, d_model]
        self.hook_shared_out = HookPoint()  # [batch, pos, d_model]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [tokens, d_model] -> (indices [tokens, k], weights [tokens, k] float32), transformers' noaux_tc maths."""
        cfg = self.cfg
        assert cfg.num_experts is not None and cfg.experts_per_token is not None
        logits = self.hook_router_logits(x.float() @ self.W_router.float())
        scores = self.hook_expert_weights(logits.sigmoid())
        choice = scores + self.e_score_correction_bias.to(scores.device)
        if cfg.n_group > 1 and cfg.topk_group < cfg.n_group:
            grouped = choice.view(-1, cfg.n_group, cfg.num_experts // cfg.n_group)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [tokens, n_group]
            top_groups = group_scores.topk(cfg.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, top_groups, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(-1, cfg.num_experts)
        indices = self.hook_expert_indices(choice.topk(cfg.experts_per_token, dim=-1).indices)
        weights = scores.gather(1, indices)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return indices, self.hook_topk_weights(weights * cfg.routed_scaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, d_model] (ln2-normalised) -> routed + shared expert output [batch, pos, d_model]."""
        flat = x.reshape(-1, x.shape[-1])
        indices, weights = self.route(flat)
        out = self.hook_routed_out(self.experts(flat, indices, weights).view(x.shape))
        if self.shared_experts is not None:
            out = out + self.hook_shared_out(self.shared_experts(x))
        return out
