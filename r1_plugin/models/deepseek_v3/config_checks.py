"""The one check of a DeepSeek-V3 config.json before anything is built: every value the architecture cannot run
is refused naming the field, its value and the allowed range. Independent of TransformerLens (plain Python on a
dict or a transformers config object), so the HookedTransformer and the TransformerBridge loaders share it."""

from __future__ import annotations

from typing import Any

from r1_plugin.errors import UnsupportedArchitectureError
from r1_plugin.models.hf_config import get as _get
from r1_plugin.models.hf_config import get_nonnull, int_field, positive_field, rope_parameters
from r1_plugin.values import InvalidValueError, finite


def validate_config(hf_config: Any, where: str = "config.json") -> None:
    """Refuse a DeepSeek-V3 config (config.json dict or transformers config object) that this architecture cannot
    run, naming the field, its value and the allowed range; `where` (model name or path) leads each message.

    Values that are wrong (a count of 0, a negative eps, n_group 0, a [0, 0] FP8 block) raise InvalidValueError;
    settings of another architecture (other routing, activation, rope type or quantisation) raise
    UnsupportedArchitectureError. Called by every DeepSeek-V3 load path before anything is built.
    """
    _validate_sizes(hf_config, where)
    _refuse_other_architectures(hf_config, where)
    _validate_routing(hf_config, where)
    _validate_norm_and_rope(hf_config, where)
    _validate_quantization(hf_config, where)


def _refuse_other_architectures(hf_config: Any, where: str) -> None:
    """Settings of architectures r1_plugin does not implement: routing, activation, MoE layout, GQA."""
    scoring = _get(hf_config, "scoring_func", "sigmoid")
    topk_method = _get(hf_config, "topk_method", "noaux_tc")
    if scoring != "sigmoid" or topk_method != "noaux_tc":
        raise UnsupportedArchitectureError(
            f"{where}: scoring_func={scoring!r}, topk_method={topk_method!r}; r1_plugin implements "
            "DeepSeek-V3 routing (sigmoid scores, noaux_tc group-limited top-k) like transformers' DeepseekV3."
        )
    if get_nonnull(hf_config, "moe_layer_freq", 1) != 1:
        raise UnsupportedArchitectureError(
            f"{where}: moe_layer_freq={_get(hf_config, 'moe_layer_freq')!r} is not supported (allowed: 1, every "
            "layer from first_k_dense_replace on is MoE, as in every DeepSeek-V3 release)."
        )
    if (_get(hf_config, "hidden_act", "silu") or "silu") != "silu":
        raise UnsupportedArchitectureError(f"{where}: hidden_act must be 'silu', got {_get(hf_config, 'hidden_act')!r}.")
    heads, n_kv = _get(hf_config, "num_attention_heads"), _get(hf_config, "num_key_value_heads")
    if n_kv is not None and n_kv != heads:
        raise UnsupportedArchitectureError(
            f"{where}: config field `num_key_value_heads`={n_kv!r} must equal num_attention_heads={heads!r} (MLA)."
        )


def _validate_sizes(hf_config: Any, where: str) -> None:
    """Every width and count the weights are built from: positive integers (rope dims even)."""
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "kv_lora_rank", "qk_nope_head_dim",
                "v_head_dim", "moe_intermediate_size", "max_position_embeddings"):
        int_field(hf_config, key, where, 1)
    int_field(hf_config, "vocab_size", where, 1, optional=True, why="null: taken from the tokenizer")
    int_field(hf_config, "q_lora_rank", where, 1, optional=True, why="null for a full-rank q_proj")
    rope_dim = int_field(hf_config, "qk_rope_head_dim", where, 2)
    if rope_dim and rope_dim % 2:
        raise InvalidValueError(
            f"{where}: config field `qk_rope_head_dim`={rope_dim} must be even (rotary embeddings rotate pairs)."
        )
    dense = int_field(hf_config, "first_k_dense_replace", where, 0, optional=True) or 0
    if dense:
        int_field(hf_config, "intermediate_size", where, 1, why="the dense MLP of the first_k_dense_replace layers")
    int_field(hf_config, "n_shared_experts", where, 0, optional=True)


def _validate_routing(hf_config: Any, where: str) -> None:
    """Group-limited top-k: n_group equal groups of >= 2 experts, topk_group of them chosen, k experts among those."""
    experts = int_field(hf_config, "n_routed_experts", where, 1)
    groups = int_field(hf_config, "n_group", where, 1, experts, optional=True, why="null means 1") or 1
    if experts % groups:
        raise InvalidValueError(
            f"{where}: config field `n_routed_experts`={experts} must be divisible by n_group={groups} (experts are "
            "split into equal groups)."
        )
    if experts // groups < 2:
        raise InvalidValueError(
            f"{where}: n_routed_experts={experts} / n_group={groups} leaves {experts // groups} expert per group; "
            "group-limited routing scores each group by its top-2 experts, so each group needs >= 2."
        )
    topk_group = int_field(hf_config, "topk_group", where, 1, groups, optional=True, why=f"n_group={groups}") or 1
    available = topk_group * (experts // groups)
    int_field(hf_config, "num_experts_per_tok", where, 1, available,
              why=f"the experts in the topk_group={topk_group} selected groups of {experts // groups}")
    positive_field(hf_config, "routed_scaling_factor", where, 1.0)


def _validate_norm_and_rope(hf_config: Any, where: str) -> None:
    """RMSNorm eps and the rotary settings (default or YaRN) must be finite and positive where they divide."""
    positive_field(hf_config, "rms_norm_eps", where, 1e-6, why="RMSNorm divides by sqrt(mean(x^2) + eps)")
    rope = rope_parameters(hf_config)
    positive_field(rope, "rope_theta", where)
    rope_type = str(rope.get("rope_type", "default")).lower()
    if rope_type == "yarn":
        scaling = f"{where} rope_scaling"
        for key in ("factor", "beta_fast", "beta_slow"):
            if rope.get(key) is not None:
                positive_field(rope, key, scaling)
        int_field(rope, "original_max_position_embeddings", scaling, 1, optional=True)
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if rope.get(key) is not None:
                finite(f"{scaling}: field `{key}`", rope[key])
    elif rope_type not in ("default", "none"):
        raise UnsupportedArchitectureError(
            f"{where}: rope type {rope_type!r} is not supported for DeepSeek-V3 (use 'default' or 'yarn')."
        )


def _validate_quantization(hf_config: Any, where: str) -> None:
    """quantization_config: absent, or DeepSeek's block-wise FP8 with a block of two positive integers."""
    quant = _get(hf_config, "quantization_config")
    if not quant:
        return
    quant = quant if isinstance(quant, dict) else (quant.to_dict() if hasattr(quant, "to_dict") else vars(quant))
    method = quant.get("quant_method")
    if method not in ("fp8", None):
        raise UnsupportedArchitectureError(
            f"{where}: quant_method {method!r} is not supported; r1_plugin reads unquantised (bf16/fp16/fp32) "
            "and block-wise FP8 (DeepSeek's release format) checkpoints."
        )
    if quant.get("fmt") not in (None, "e4m3"):
        raise UnsupportedArchitectureError(f"{where}: FP8 format {quant.get('fmt')!r} is not supported (allowed: e4m3).")
    block = quant.get("weight_block_size")
    if block is None:
        return
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        raise InvalidValueError(
            f"{where}: quantization_config `weight_block_size` must be two integers [rows, cols], got {block!r}"
        )
    for axis, size in zip(("rows", "cols"), block):
        int_field({"weight_block_size": size}, "weight_block_size", f"{where}: quantization_config ({axis})", 1)
