"""TransformerLens config for DeepSeek-V3/R1 (MLA + DeepSeek MoE) and the HF -> TL config conversion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

from r1_plugin.models.deepseek_v3.config_checks import validate_config
from r1_plugin.models.hf_config import get as _get
from r1_plugin.models.hf_config import get_nonnull, rope_parameters
from r1_plugin.values import InvalidValueError

__all__ = ["ARCHITECTURE", "DeepseekV3HookedConfig", "hf_to_tl_config_dict", "validate_config", "yarn_get_mscale"]

ARCHITECTURE = "DeepseekV3ForCausalLM"


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(scale) + 1 (1 when the context is not extended)."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass
class DeepseekV3HookedConfig(HookedTransformerConfig):
    """HookedTransformerConfig plus the MLA, MoE and YaRN fields of DeepSeek-V3 (field names follow HF's config)."""

    q_lora_rank: int | None = None
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rope_interleave: bool = True
    attention_bias: bool = False
    d_mlp_moe: int = 2048
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0
    yarn_mscale: float = 0.0
    yarn_mscale_all_dim: float = 0.0
    softmax_scale: float = -1.0
    # keep_fp8=True: FP8 checkpoint weights stay e4m3 in memory and are dequantised per forward (fp8_weights.py);
    # routed experts are dequantised only when they receive tokens, this many experts at a time.
    keep_fp8: bool = False
    fp8_experts_per_chunk: int = 16
    # Byte-balanced placement (models/device_plan.py): device index of each block; None = TransformerLens's split.
    device_plan: list[int] | None = None

    def __post_init__(self) -> None:
        self.original_architecture = self.original_architecture or ARCHITECTURE
        self.positional_embedding_type = "rotary"
        self.d_head = self.v_head_dim
        self.rotary_dim = self.qk_rope_head_dim
        self._validate()
        if self.softmax_scale < 0:
            scale = self.qk_head_dim**-0.5
            if self.use_yarn_rope and self.yarn_mscale_all_dim:
                scale *= yarn_get_mscale(self.yarn_factor, self.yarn_mscale_all_dim) ** 2
            self.softmax_scale = scale
        self.attn_scale = 1.0 / self.softmax_scale
        self.use_attn_scale = True
        super().__post_init__()
        self.n_params = self.count_block_params()

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: the no-rope part plus the decoupled rope part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_width(self) -> int:
        """Numbers cached per token per layer: the compressed KV latent plus the shared rope key (576 for R1)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        """Layers from first_k_dense_replace on use the routed MoE; earlier ones a dense gated MLP."""
        return layer >= self.first_k_dense_replace

    def fp8_expert_transient_bytes(self) -> int:
        """Upper bound of the memory a keep_fp8 MoE forward adds for dequantised experts (one chunk at a time).

        A chunk of C = fp8_experts_per_chunk experts holds at most two dequantised [C, d_model, d_mlp_moe] matrices
        in the model dtype while a third is built (its gathered e4m3 copy, a float32 working copy and the cast):
        C * d_model * d_mlp_moe * (3 * itemsize + 5) bytes; 2.6 GB for R1 in bfloat16 with C=16.
        """
        per = self.d_model * self.d_mlp_moe * (3 * self.dtype.itemsize + 5)
        return min(self.fp8_experts_per_chunk, self.num_experts or 0) * per

    def _validate(self) -> None:
        """Reject configs whose maths this implementation does not reproduce (the same rules as validate_config,
        read from this config's TransformerLens field names)."""
        if self.num_experts is None or self.experts_per_token is None:
            raise InvalidValueError(
                "DeepseekV3HookedConfig needs num_experts (n_routed_experts) and experts_per_token."
            )
        validate_config(self.hf_fields(), "DeepseekV3HookedConfig")

    def hf_fields(self) -> dict[str, Any]:
        """This config's architecture fields under HF's config.json names (what validate_config checks)."""
        fields: dict[str, Any] = {
            "hidden_size": self.d_model, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads if self.n_heads != -1 else self.d_model // self.d_head,
            "intermediate_size": self.d_mlp, "moe_intermediate_size": self.d_mlp_moe,
            "q_lora_rank": self.q_lora_rank, "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim, "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim, "n_routed_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token, "n_shared_experts": self.n_shared_experts,
            "n_group": self.n_group, "topk_group": self.topk_group, "first_k_dense_replace": self.first_k_dense_replace,
            "rms_norm_eps": self.eps, "rope_theta": self.rotary_base, "routed_scaling_factor": self.routed_scaling_factor,
            "max_position_embeddings": self.n_ctx,
            "vocab_size": self.d_vocab if self.d_vocab != -1 else None,  # -1: TransformerLens sets it from the tokenizer
        }
        if self.use_yarn_rope:
            fields["rope_scaling"] = {
                "type": "yarn", "factor": self.yarn_factor, "beta_fast": self.yarn_beta_fast,
                "beta_slow": self.yarn_beta_slow, "mscale": self.yarn_mscale, "mscale_all_dim": self.yarn_mscale_all_dim,
                "original_max_position_embeddings": self.yarn_original_max_position_embeddings,
            }
        return fields

    def count_block_params(self) -> int:
        """Exact parameter count of the blocks (embeddings, final norm and unembedding excluded, as in TL)."""
        d, h = self.d_model, self.n_heads
        attn = d * self.kv_cache_width + self.kv_lora_rank + self.kv_lora_rank * h * (
            self.qk_nope_head_dim + self.v_head_dim
        ) + h * self.v_head_dim * d
        if self.q_lora_rank is None:
            attn += d * h * self.qk_head_dim
        else:
            attn += d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * h * self.qk_head_dim
        if self.attention_bias:
            attn += (self.q_lora_rank or 0) + self.kv_cache_width + d
        dense = 3 * d * self.d_mlp
        moe = d * self.num_experts + 3 * d * self.d_mlp_moe * (self.num_experts + self.n_shared_experts)
        norms = 2 * d
        n_dense = min(self.first_k_dense_replace, self.n_layers)
        return self.n_layers * (attn + norms) + n_dense * dense + (self.n_layers - n_dense) * moe



def hf_to_tl_config_dict(hf_config: Any, official_name: str) -> dict[str, Any]:
    """Convert an HF DeepseekV3 config (object or config.json dict) to DeepseekV3HookedConfig keyword arguments."""
    validate_config(hf_config, official_name)
    n_heads = _get(hf_config, "num_attention_heads")
    rope = rope_parameters(hf_config)
    rope_type = str(rope.get("rope_type", "default")).lower()
    max_pos = _get(hf_config, "max_position_embeddings")
    cfg: dict[str, Any] = {
        "d_model": _get(hf_config, "hidden_size"),
        "d_head": _get(hf_config, "v_head_dim"),
        "n_heads": n_heads,
        "n_layers": _get(hf_config, "num_hidden_layers"),
        "n_ctx": max_pos,
        "d_mlp": _get(hf_config, "intermediate_size"),
        "d_vocab": get_nonnull(hf_config, "vocab_size", -1),  # -1: TransformerLens takes it from the tokenizer
        "eps": _get(hf_config, "rms_norm_eps", 1e-6),
        "act_fn": "silu",
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "positional_embedding_type": "rotary",
        "rotary_base": float(rope["rope_theta"]),
        "tie_word_embeddings": bool(_get(hf_config, "tie_word_embeddings", False)),
        "initializer_range": _get(hf_config, "initializer_range", 0.02),
        "tokenizer_prepends_bos": True,
        "default_prepend_bos": True,
        "original_architecture": ARCHITECTURE,
        "q_lora_rank": _get(hf_config, "q_lora_rank"),
        "kv_lora_rank": _get(hf_config, "kv_lora_rank"),
        "qk_nope_head_dim": _get(hf_config, "qk_nope_head_dim"),
        "qk_rope_head_dim": _get(hf_config, "qk_rope_head_dim"),
        "v_head_dim": _get(hf_config, "v_head_dim"),
        "rope_interleave": bool(_get(hf_config, "rope_interleave", True)),
        "attention_bias": bool(_get(hf_config, "attention_bias", False)),
        "d_mlp_moe": _get(hf_config, "moe_intermediate_size"),
        "num_experts": _get(hf_config, "n_routed_experts"),
        "experts_per_token": _get(hf_config, "num_experts_per_tok"),
        "n_shared_experts": get_nonnull(hf_config, "n_shared_experts", 0),
        "n_group": get_nonnull(hf_config, "n_group", 1),
        "topk_group": get_nonnull(hf_config, "topk_group", 1),
        "norm_topk_prob": bool(_get(hf_config, "norm_topk_prob", True)),
        "routed_scaling_factor": float(_get(hf_config, "routed_scaling_factor", 1.0)),
        "first_k_dense_replace": get_nonnull(hf_config, "first_k_dense_replace", 0),
    }
    if rope_type == "yarn":
        factor = rope.get("factor")
        original = rope.get("original_max_position_embeddings") or max_pos
        if factor is None:
            factor = max_pos / original
        cfg.update(
            use_yarn_rope=True,
            yarn_factor=float(factor),
            yarn_beta_fast=float(rope.get("beta_fast") or 32),
            yarn_beta_slow=float(rope.get("beta_slow") or 1),
            yarn_original_max_position_embeddings=int(original),
            yarn_truncate=bool(rope.get("truncate", True)),
            yarn_mscale=float(rope.get("mscale") or 0.0),
            yarn_mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
        )
        mscale, mscale_all = cfg["yarn_mscale"], cfg["yarn_mscale_all_dim"]
        if rope.get("attention_factor") is not None:
            cfg["yarn_attention_factor"] = float(rope["attention_factor"])
        elif mscale and mscale_all:
            cfg["yarn_attention_factor"] = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all)
        else:
            cfg["yarn_attention_factor"] = yarn_get_mscale(factor)
    cfg["tokenizer_name"] = official_name
    return cfg
