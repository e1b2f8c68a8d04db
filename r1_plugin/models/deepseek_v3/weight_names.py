"""Checkpoint tensor name -> where it goes in the DeepSeek-V3 HookedTransformer, and the shape the config gives it."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig

logger = logging.getLogger(__name__)

# One destination of a checkpoint tensor: (TL parameter name, expert index or None, transform of the HF tensor).
Destination = tuple[str, int | None, Callable[[torch.Tensor], torch.Tensor]]

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.t()


def _same(w: torch.Tensor) -> torch.Tensor:
    return w


def _entry(key: str, cfg: DeepseekV3HookedConfig) -> tuple[list[Destination], tuple[int, ...]] | None:
    """The destinations of checkpoint tensor `key` and its shape in the checkpoint (None: not part of the model)."""
    h, nope, rope, v, qk = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.qk_head_dim
    d, r, q_lora, m, vocab = cfg.d_model, cfg.kv_lora_rank, cfg.q_lora_rank or 0, cfg.d_mlp_moe, cfg.d_vocab
    if key == "model.embed_tokens.weight":
        return [("embed.W_E", None, _same)], (vocab, d)
    if key == "model.norm.weight":
        return [("ln_final.w", None, _same)], (d,)
    if key == "lm_head.weight":
        return [("unembed.W_U", None, _t)], (vocab, d)
    match = _LAYER_RE.match(key)
    if match is None:
        return None
    layer, rest = int(match.group(1)), match.group(2)
    if layer >= cfg.n_layers:
        return None
    p = f"blocks.{layer}."
    f, e, shared = cfg.d_mlp or 0, cfg.num_experts or 0, m * cfg.n_shared_experts
    simple: dict[str, tuple[Destination, tuple[int, ...]]] = {
        "input_layernorm.weight": ((p + "ln1.w", None, _same), (d,)),
        "post_attention_layernorm.weight": ((p + "ln2.w", None, _same), (d,)),
        "self_attn.q_a_proj.weight": ((p + "attn.W_Q_a", None, _t), (q_lora, d)),
        "self_attn.q_a_proj.bias": ((p + "attn.b_Q_a", None, _same), (q_lora,)),
        "self_attn.q_a_layernorm.weight": ((p + "attn.q_a_norm.w", None, _same), (q_lora,)),
        "self_attn.q_b_proj.weight": (
            (p + "attn.W_Q_b", None, lambda w: w.view(h, qk, -1).transpose(1, 2)), (h * qk, q_lora)
        ),
        "self_attn.q_proj.weight": ((p + "attn.W_Q", None, lambda w: w.view(h, qk, -1).transpose(1, 2)), (h * qk, d)),
        "self_attn.kv_a_proj_with_mqa.weight": ((p + "attn.W_KV_a", None, _t), (r + rope, d)),
        "self_attn.kv_a_proj_with_mqa.bias": ((p + "attn.b_KV_a", None, _same), (r + rope,)),
        "self_attn.kv_a_layernorm.weight": ((p + "attn.kv_a_norm.w", None, _same), (r,)),
        "self_attn.o_proj.weight": ((p + "attn.W_O", None, lambda w: w.t().reshape(h, v, -1)), (d, h * v)),
        "self_attn.o_proj.bias": ((p + "attn.b_O", None, _same), (d,)),
        "mlp.gate_proj.weight": ((p + "mlp.W_gate", None, _t), (f, d)),
        "mlp.up_proj.weight": ((p + "mlp.W_in", None, _t), (f, d)),
        "mlp.down_proj.weight": ((p + "mlp.W_out", None, _t), (d, f)),
        "mlp.gate.weight": ((p + "mlp.W_router", None, _t), (e, d)),
        "mlp.gate.e_score_correction_bias": ((p + "mlp.e_score_correction_bias", None, _same), (e,)),
        "mlp.shared_experts.gate_proj.weight": ((p + "mlp.shared_experts.W_gate", None, _t), (shared, d)),
        "mlp.shared_experts.up_proj.weight": ((p + "mlp.shared_experts.W_in", None, _t), (shared, d)),
        "mlp.shared_experts.down_proj.weight": ((p + "mlp.shared_experts.W_out", None, _t), (d, shared)),
    }
    if rest in simple:
        destination, shape = simple[rest]
        return [destination], shape
    if rest == "self_attn.kv_b_proj.weight":
        return [
            (p + "attn.W_K_b", None, lambda w: w.view(h, nope + v, -1)[:, :nope].transpose(1, 2)),
            (p + "attn.W_V_b", None, lambda w: w.view(h, nope + v, -1)[:, nope:].transpose(1, 2)),
        ], (h * (nope + v), r)
    expert = _EXPERT_RE.match(rest)
    if expert is not None:
        kind = expert.group(2)
        name = {"gate_proj": "W_gate", "up_proj": "W_in", "down_proj": "W_out"}[kind]
        return [(p + f"mlp.experts.{name}", int(expert.group(1)), _t)], ((d, m) if kind == "down_proj" else (m, d))
    if rest == "mlp.experts.gate_up_proj":  # transformers 5 fused layout [E, 2*m, d]
        return [
            (p + "mlp.experts.W_gate", None, lambda w: w[:, :m].transpose(1, 2)),
            (p + "mlp.experts.W_in", None, lambda w: w[:, m:].transpose(1, 2)),
        ], (e, 2 * m, d)
    if rest == "mlp.experts.down_proj":  # transformers 5 fused layout [E, d, m]
        return [(p + "mlp.experts.W_out", None, lambda w: w.transpose(1, 2))], (e, d, m)
    if rest.endswith("weight_scale_inv"):
        return None
    logger.warning("ignoring unexpected checkpoint tensor %s", key)
    return None


def destinations(key: str, cfg: DeepseekV3HookedConfig) -> list[Destination] | None:
    """Where a checkpoint tensor goes in the HookedTransformer (None: not part of the kept model, e.g. MTP)."""
    entry = _entry(key, cfg)
    return entry[0] if entry is not None else None


def published_shape(key: str, cfg: DeepseekV3HookedConfig) -> tuple[int, ...] | None:
    """The shape `cfg` gives checkpoint tensor `key` as DeepSeek publishes it (None: not part of the model)."""
    entry = _entry(key, cfg)
    return entry[1] if entry is not None else None
