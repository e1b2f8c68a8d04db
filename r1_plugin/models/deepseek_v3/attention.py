"""Multi-head Latent Attention (MLA) of DeepSeek-V2/V3 as a TransformerLens component, every step hooked."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.components import RMSNorm
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_offset_position_ids

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.kv_cache import LatentKVCacheEntry
from r1_plugin.models.deepseek_v3.rope import DeepseekRotary

# transformers' DeepseekV3RMSNorm default: the q/kv latent norms do not use rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def heads_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[head, in, out] -> [in, head * out] for one matmul over all heads.

    A view (no copy) when the weight keeps the checkpoint's [head, out, in] storage, as the loader leaves it;
    a copy for a contiguous [head, in, out] tensor.
    """
    return weight.permute(1, 0, 2).reshape(weight.shape[1], -1)


def is_observed(hook: HookPoint) -> bool:
    """Whether any forward hook (TransformerLens's or a raw torch one, local or global) could edit `hook`'s output."""
    from torch.nn.modules import module as torch_module

    local = (hook._forward_hooks, hook._forward_pre_hooks)
    global_names = ("_global_forward_hooks", "_global_forward_pre_hooks")
    return any(local) or any(getattr(torch_module, name, None) for name in global_names)


def run_hook(hook: HookPoint, x: torch.Tensor, watch: bool) -> tuple[torch.Tensor, bool]:
    """`hook(x)` and whether a hook changed the values (only checked when `watch` and something is attached).

    The check compares against a copy taken before the hooks run, so in-place edits count too; it never changes
    what is computed, only whether an edit has to be remembered beyond this forward.
    """
    if not (watch and is_observed(hook)):
        return hook(x), False
    before = x.clone()
    out = hook(x)
    same = out.shape == before.shape and out.dtype == before.dtype and torch.equal(out, before)
    return out, not same


@functools.lru_cache(maxsize=8)
def causal_hide(n_q: int, past: int, device: torch.device) -> torch.Tensor:
    """[n_q, past + n_q] bool, True where query i (at position past + i) would see a later key; shared, read-only."""
    with torch.inference_mode(False):  # a normal tensor: autograd may save it even if first built in inference
        return torch.ones(n_q, past + n_q, dtype=torch.bool, device=device).triu_(past + 1)


def records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on these tensors (then no `out=` writes, which it cannot differentiate)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def latent_norm(cfg: DeepseekV3HookedConfig, length: int) -> RMSNorm:
    """RMSNorm over a latent (q_lora_rank or kv_lora_rank wide) with HF's fixed eps of 1e-6."""
    norm = RMSNorm(cfg, length=length)
    norm.eps = LATENT_NORM_EPS
    return norm


class DeepseekV3Attention(nn.Module):
    """MLA: q (optionally through a LoRA latent), a compressed KV latent plus one shared rope key per token.

    Weights use TransformerLens orientation (input dim before output dim, heads first):
    W_Q_a [d_model, q_lora_rank], W_Q_b [head, q_lora_rank, qk_head_dim] (or W_Q [head, d_model, qk_head_dim]),
    W_KV_a [d_model, kv_lora_rank + qk_rope_head_dim], W_K_b [head, kv_lora_rank, qk_nope_head_dim],
    W_V_b [head, kv_lora_rank, v_head_dim], W_O [head, v_head_dim, d_model].
    """

    def __init__(self, cfg: DeepseekV3HookedConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        h, d, dtype = cfg.n_heads, cfg.d_model, cfg.dtype
        r, rope = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        if cfg.q_lora_rank is not None:
            self.W_Q_a = nn.Parameter(torch.empty(d, cfg.q_lora_rank, dtype=dtype))
            if cfg.attention_bias:
                self.b_Q_a = nn.Parameter(torch.zeros(cfg.q_lora_rank, dtype=dtype))
            self.q_a_norm = latent_norm(cfg, cfg.q_lora_rank)
            self.W_Q_b = nn.Parameter(torch.empty(h, cfg.q_lora_rank, cfg.qk_head_dim, dtype=dtype))
            self.hook_q_latent = HookPoint()  # [batch, pos, q_lora_rank], after q_a_norm
        else:
            self.W_Q = nn.Parameter(torch.empty(h, d, cfg.qk_head_dim, dtype=dtype))
        self.W_KV_a = nn.Parameter(torch.empty(d, r + rope, dtype=dtype))
        if cfg.attention_bias:
            self.b_KV_a = nn.Parameter(torch.zeros(r + rope, dtype=dtype))
            self.b_O = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.kv_a_norm = latent_norm(cfg, r)
        self.W_K_b = nn.Parameter(torch.empty(h, r, cfg.qk_nope_head_dim, dtype=dtype))
        self.W_V_b = nn.Parameter(torch.empty(h, r, cfg.v_head_dim, dtype=dtype))
        self.W_O = nn.Parameter(torch.empty(h, cfg.v_head_dim, d, dtype=dtype))
        self.rotary = DeepseekRotary(cfg)

        self.hook_kv_latent = HookPoint()  # [batch, pos, kv_lora_rank], after kv_a_norm: what the cache stores
        self.hook_k_rope = HookPoint()  # [batch, pos, qk_rope_head_dim], shared rope key before rotary
        self.hook_q = HookPoint()  # [batch, pos, head, qk_head_dim], before rotary (nope then rope part)
        self.hook_rot_q = HookPoint()  # [batch, pos, head, qk_head_dim], after rotary
        self.hook_k = HookPoint()  # [batch, pos, head, qk_head_dim], before rotary; current positions only
        self.hook_rot_k = HookPoint()  # [batch, pos, head, qk_head_dim], after rotary; current positions only
        self.hook_v = HookPoint()  # [batch, pos, head, v_head_dim]; current positions only
        self.hook_attn_scores = HookPoint()  # [batch, head, pos, kv_pos], scaled and masked
        self.hook_pattern = HookPoint()  # [batch, head, pos, kv_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, v_head_dim]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], fires only with cfg.use_attn_result
        # Attend to cached positions in latent space (weight absorption) where that is cheaper (decode). The choice
        # depends on shapes only, never on which hooks are attached, so observing never changes the numbers.
        self.absorb_cached = True

    def positions(
        self, batch: int, n_new: int, past: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Absolute positions of the new tokens: cached length onwards, shifted past left padding like TL."""
        if attention_mask is None:
            return torch.arange(past, past + n_new, device=device)[None].expand(batch, -1)
        return get_offset_position_ids(past, attention_mask).to(device)

    def rotate_heads(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        """[batch, pos, head, nope + rope] with its rope part rotated (cos/sin [batch, pos, rope/2])."""
        nope, rope = t.split([self.cfg.qk_nope_head_dim, self.cfg.qk_rope_head_dim], dim=-1)
        cos, sin = cos[:, :, None], sin[:, :, None]
        if records_grad(t):
            return torch.cat([nope, *self.rotary.halves(rope, cos, sin)], dim=-1)
        out = self.assemble(hook, nope, width=t.shape[-1])
        self.rotary.rotate_into(rope, cos, sin, out[..., nope.shape[-1] :])
        return out

    def assemble(self, hook: HookPoint, *parts: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Concatenate [batch, pos, head, *] parts (broadcast over heads) on the last dim, for `hook` to see; with
        `width`, a wider result whose remaining columns the caller fills.

        Unless `hook` is observed (or autograd records), the memory is laid out head-major, as the score matmul
        reads it, which saves it a copy; a hook sees an ordinary contiguous [batch, pos, head, d] tensor. Either way
        the matmul gets the same contiguous head-major operand, so observing never changes the numbers.
        """
        batch, n, h = parts[0].shape[:3]
        if records_grad(*parts):
            return torch.cat([p.expand(batch, n, h, -1) for p in parts], dim=-1)
        width = sum(p.shape[-1] for p in parts) if width is None else width
        if is_observed(hook):
            out = parts[0].new_empty(batch, n, h, width)
        else:
            out = parts[0].new_empty(batch, h, n, width).transpose(1, 2)
        start = 0
        for part in parts:
            out[..., start : start + part.shape[-1]].copy_(part)
            start += part.shape[-1]
        return out

    # Long: the hot path; its hooks fire in TransformerLens order between in-place cache writes that share its locals
    def forward(
        self,
        x: torch.Tensor,
        past_kv_cache_entry: LatentKVCacheEntry | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [batch, pos, d_model] (already ln1-normalised) -> attention output [batch, pos, d_model]."""
        cfg = self.cfg
        batch, n_new, _ = x.shape
        h = cfg.n_heads
        entry = past_kv_cache_entry
        if entry is not None and not isinstance(entry, LatentKVCacheEntry):
            raise TypeError(
                "DeepSeek-V3 attention caches its compressed latent: build the cache with "
                "TransformerLensKeyValueCache.init_cache(model.cfg, device, batch) after `import r1_plugin`, "
                f"not a per-head cache ({type(entry).__name__})."
            )

        if cfg.q_lora_rank is not None:
            q_latent = x @ self.W_Q_a
            if cfg.attention_bias:
                q_latent = q_latent + self.b_Q_a
            q_latent = self.hook_q_latent(self.q_a_norm(q_latent))
            q = q_latent @ heads_matrix(self.W_Q_b)
        else:
            q = x @ heads_matrix(self.W_Q)
        q = self.hook_q(q.view(batch, n_new, h, cfg.qk_head_dim))

        compressed = x @ self.W_KV_a
        if cfg.attention_bias:
            compressed = compressed + self.b_KV_a
        kv_latent, k_rope = compressed.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        kv_latent = self.hook_kv_latent(self.kv_a_norm(kv_latent))
        k_rope = self.hook_k_rope(k_rope)

        past = 0 if entry is None else entry.length
        if attention_mask is None:  # positions past..past+n_new-1 in every row: a slice of the table
            cos, sin = self.rotary.cos_sin_range(past, past + n_new, batch, q.dtype, x.device)  # [batch, pos, rope/2]
        else:
            pos = self.positions(batch, n_new, past, attention_mask, x.device)
            cos, sin = self.rotary.cos_sin(pos, q.dtype, past + n_new)
        q = self.hook_rot_q(self.rotate_heads(q, cos, sin, self.hook_rot_q))
        # What the cache stores for these positions: the latent and the rotated shared rope key.
        if records_grad(kv_latent, k_rope):
            new_latent = torch.cat([kv_latent, self.rotary.apply(k_rope, cos, sin)], dim=-1)
        else:  # written in place: no concatenation
            new_latent = kv_latent.new_empty(batch, n_new, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            new_latent[..., : cfg.kv_lora_rank].copy_(kv_latent)
            self.rotary.rotate_into(k_rope, cos, sin, new_latent[..., cfg.kv_lora_rank :])
        rotated_rope = new_latent[..., cfg.kv_lora_rank :]
        # Per-head K/V of the current positions only, as in TransformerLens; an edit to them is detected only
        # where it has to outlive this forward (a cache that stores), never by changing how anything is computed.
        watch = entry is not None and not entry.frozen
        # Read once per forward (FP8 weights dequantise on access).
        w_k_b, w_v_b = self.W_K_b, self.W_V_b
        k_nope = (kv_latent @ heads_matrix(w_k_b)).view(batch, n_new, h, cfg.qk_nope_head_dim)
        if is_observed(self.hook_k):
            k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, h, -1)], -1)
            k, k_edited = run_hook(self.hook_k, k, watch)
            rot_k = self.rotate_heads(k, cos, sin, self.hook_rot_k)
        else:  # nothing can edit the pre-rotary keys: rotate the shared rope key once, not once per head
            k_edited, rot_k = False, self.assemble(self.hook_rot_k, k_nope, rotated_rope[:, :, None])
        v, v_edited = run_hook(
            self.hook_v, (kv_latent @ heads_matrix(w_v_b)).view(batch, n_new, h, cfg.v_head_dim), watch
        )
        k, rot_k_edited = run_hook(self.hook_rot_k, rot_k, watch)

        past_latent = None if entry is None else entry.past_latent
        if entry is not None:
            entry.append(new_latent)
        # Once a hook has edited this layer's K/V under a storing cache, the latent cannot represent the edit:
        # from then on the entry also keeps exact per-head K/V (cached positions rebuilt from their latents).
        past_kv = None if entry is None else entry.edited_kv
        edited = k_edited or v_edited or rot_k_edited
        keep_kv = entry is not None and not entry.frozen and (past_kv is not None or edited)
        if past_kv is None and past and (keep_kv or not (self.absorb_cached and self.use_absorbed(n_new, past))):
            past_kv = self.expand_latent(past_latent, w_k_b, w_v_b)  # type: ignore[arg-type]
        if past_kv is None and past:
            scores, z_of = self.absorbed_scores(q, past_latent, k, v, w_k_b, w_v_b)  # type: ignore[arg-type]
        else:
            if past_kv is not None:
                k, v = torch.cat([past_kv[0], k], dim=1), torch.cat([past_kv[1], v], dim=1)
            if keep_kv:
                entry.edited_kv = (k, v)  # type: ignore[union-attr]
            scores, z_of = self.expanded_scores(q, k, v, cfg.softmax_scale)
        # Already scaled (inside the matmul), masked in place: no extra pass over [batch, head, pos, kv_pos].
        scores = self.hook_attn_scores(self.apply_causal_mask(scores, past, attention_mask))
        pattern = F.softmax(scores, dim=-1, dtype=torch.float32)
        if attention_mask is not None:  # a padding query sees no key: its row is 0/0, made 0 (causal rows never are)
            pattern = torch.nan_to_num(pattern, nan=0.0)
        pattern = self.hook_pattern(pattern.to(new_latent.dtype))
        z = self.hook_z(z_of(pattern))  # [batch, pos, head, v_head_dim]

        if cfg.use_attn_result:
            out = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O)).sum(dim=2)
        else:
            out = z.reshape(batch, n_new, -1) @ self.W_O.reshape(-1, cfg.d_model)
        if cfg.attention_bias:
            out = out + self.b_O
        return out

    def use_absorbed(self, n_q: int, n_past: int) -> bool:
        """Whether attending to n_past cached positions in latent space takes fewer multiply-adds (shapes only).

        Expanded: n_past*h*r*(nope+v) to rebuild cached K and V, h*q*n_past*(qk+v) to attend. Absorbed:
        q*h*r*(nope+v) to fold W_K_b into the queries and W_V_b into z, h*q*n_past*(2r+rope) to attend over the
        latents. Decode (q=1 new query against n_past cached positions) wins by ~n_past; long chunks lose.
        """
        cfg = self.cfg
        r, nope, rope, v = cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        expanded = n_past * r * (nope + v) + n_q * n_past * (nope + rope + v)
        absorbed = n_q * r * (nope + v) + n_q * n_past * (2 * r + rope)
        return absorbed < expanded

    def expand_latent(
        self, latent: torch.Tensor, w_k_b: torch.Tensor, w_v_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached latents [b, K, r + rope] -> rotated per-head K [b, K, h, qk] and V [b, K, h, v] (no hooks)."""
        cfg = self.cfg
        batch, n_k, _ = latent.shape
        kv_latent, k_rope = latent.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        k_nope = (kv_latent @ heads_matrix(w_k_b)).view(batch, n_k, cfg.n_heads, cfg.qk_nope_head_dim)
        k = torch.cat([k_nope, k_rope[:, :, None, :].expand(-1, -1, cfg.n_heads, -1)], dim=-1)
        v = (kv_latent @ heads_matrix(w_v_b)).view(batch, n_k, cfg.n_heads, cfg.v_head_dim)
        return k, v

    @staticmethod
    def expanded_scores(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-head q [b, q, h, qk], k [b, K, h, qk], v [b, K, h, v]: scaled scores [b, h, q, K], pattern -> z.

        The scale is the matmul's own alpha (one pass over the scores fewer than multiplying afterwards). q and K
        go in head-major and contiguous, K read transposed (no copy when `assemble` built them that way).
        """
        batch, n_q, h, d = q.shape
        n_k = k.shape[1]
        qh = q.transpose(1, 2).reshape(batch * h, n_q, d)
        kh = k.transpose(1, 2).contiguous().view(batch * h, n_k, d)
        scores = torch.baddbmm(qh.new_empty(()), qh, kh.transpose(1, 2), beta=0.0, alpha=scale)
        return scores.view(batch, h, n_q, n_k), lambda pattern: torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)

    def absorbed_scores(
        self,
        q: torch.Tensor,
        past_latent: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        w_k_b: torch.Tensor,
        w_v_b: torch.Tensor,
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Scaled scores and z over cached latents c [b, P, r + rope] without rebuilding their K/V, then the current
        positions' per-head k/v: q_nope . (c W_K_b) = (q_nope W_K_b^T) . c and pattern @ (c W_V_b) =
        (pattern @ c) W_V_b per head."""
        cfg = self.cfg
        batch, n_q, h, _ = q.shape
        r, nope, n_past = cfg.kv_lora_rank, cfg.qk_nope_head_dim, past_latent.shape[1]
        q_nope, q_rope = q.split([nope, cfg.qk_rope_head_dim], dim=-1)
        # Heads as the batch of one matmul against W_K_b^T [h, nope, r]: [h, b*q, nope] -> [h, b*q, r].
        q_absorbed = torch.matmul(q_nope.permute(2, 0, 1, 3).reshape(h, batch * n_q, nope), w_k_b.transpose(1, 2))
        q_latent = torch.cat([q_absorbed.view(h, batch, n_q, r).transpose(0, 1), q_rope.transpose(1, 2)], dim=-1)
        # Heads folded into the query axis: one [b, h*q, r+rope] @ [b, r+rope, P], the latent read once per batch.
        past_scores = torch.baddbmm(
            q.new_empty(()), q_latent.reshape(batch, h * n_q, -1), past_latent.transpose(1, 2),
            beta=0.0, alpha=cfg.softmax_scale,
        )
        current_scores, current_z = self.expanded_scores(q, k, v, cfg.softmax_scale)
        scores = torch.cat([past_scores.view(batch, h, n_q, n_past), current_scores], dim=-1)

        def z_of(pattern: torch.Tensor) -> torch.Tensor:
            past_pattern = pattern[..., :n_past].reshape(batch, h * n_q, n_past)
            z_latent = torch.matmul(past_pattern, past_latent[..., :r])  # [b, h*q, r]
            z = torch.matmul(z_latent.view(batch, h, n_q, r).transpose(0, 1).reshape(h, batch * n_q, r), w_v_b)
            return z.view(h, batch, n_q, -1).permute(1, 2, 0, 3) + current_z(pattern[..., n_past:])

        return scores, z_of

    @staticmethod
    def apply_causal_mask(
        scores: torch.Tensor, past: int, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """-inf where a query would see a later key or a padding key (TL's convention), IN PLACE on `scores`."""
        n_q, n_k = scores.shape[-2:]
        if past + n_q != n_k:
            raise ValueError(f"{n_q} new queries + {past} cached positions != {n_k} keys; the cache is inconsistent.")
        hide = causal_hide(n_q, past, scores.device)
        if attention_mask is not None:
            hide = hide | ~attention_mask.to(scores.device).bool()[:, None, None, :]
        return scores.masked_fill_(hide, float("-inf"))
