"""DeepSeek-V3 MoE: sigmoid router with group-limited top-k, routed experts run grouped by expert, shared experts."""

from __future__ import annotations

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

# (device type, dtype) pairs where torch's grouped_mm raised: use the per-expert segment loop there.
_GROUPED_MM_UNSUPPORTED: set[tuple[str, torch.dtype]] = set()


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: list[int], offsets: torch.Tensor) -> torch.Tensor:
    """Row block g of x (rows sorted by expert; counts[g] of them) times weight[g]; empty experts cost nothing.

    Uses torch's segmented `grouped_mm` when available, no gradient is needed (its CPU backward is broken in
    torch 2.13) and there are more than SEGMENT_LOOP_MAX_ROWS rows; else one matmul per expert that received
    tokens, on contiguous slices (no gathers).
    """
    key = (x.device.type, x.dtype)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    grouped_mm = getattr(F, "grouped_mm", None)
    few_rows = x.shape[0] <= SEGMENT_LOOP_MAX_ROWS  # decode: a handful of rows, most experts empty
    if grouped_mm is not None and not needs_grad and not few_rows and key not in _GROUPED_MM_UNSUPPORTED:
        try:
            return grouped_mm(x, weight, offs=offsets)
        except (RuntimeError, NotImplementedError, TypeError):
            _GROUPED_MM_UNSUPPORTED.add(key)
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
