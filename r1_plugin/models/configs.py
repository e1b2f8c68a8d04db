"""HF config -> TransformerLens config dict for the architectures r1_plugin loads (always read from config.json)."""

from __future__ import annotations

from typing import Any

from r1_plugin.errors import UnsupportedArchitectureError
from r1_plugin.models.hf_config import get as _get
from r1_plugin.models.hf_config import int_field, positive_field, rope_parameters
from r1_plugin.models.model_names import SUPPORTED_ARCHITECTURES
from r1_plugin.values import InvalidValueError


def validate_dense_config(hf_config: Any, where: str) -> None:
    """Refuse a distill's (Qwen2/Llama) config values that would load and then give wrong or NaN numbers, naming
    the field, its value and the allowed range."""
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings"):
        int_field(hf_config, key, where, 1)
    int_field(hf_config, "vocab_size", where, 1, optional=True, why="null: taken from the tokenizer")
    heads = int_field(hf_config, "num_attention_heads", where, 1)
    assert heads is not None
    kv_heads = int_field(hf_config, "num_key_value_heads", where, 1, heads, optional=True) or heads
    if heads % kv_heads:
        raise InvalidValueError(
            f"{where}: config field `num_key_value_heads`={kv_heads} must divide num_attention_heads={heads} "
            "(each key/value head serves an equal group of query heads)."
        )
    if int_field(hf_config, "head_dim", where, 1, optional=True) is None and _get(hf_config, "hidden_size") % heads:
        raise InvalidValueError(
            f"{where}: hidden_size={_get(hf_config, 'hidden_size')} is not divisible by num_attention_heads={heads}, "
            "and no `head_dim` is given."
        )
    positive_field(hf_config, "rms_norm_eps", where, why="RMSNorm divides by sqrt(mean(x^2) + eps)")
    rope = rope_parameters(hf_config)
    positive_field(rope, "rope_theta", where)
    if str(rope.get("rope_type", "default")).lower() == "llama3":
        scaling = f"{where} rope_scaling"
        for key in ("factor", "low_freq_factor", "high_freq_factor"):
            if rope.get(key) is not None:
                positive_field(rope, key, scaling)
        int_field(rope, "original_max_position_embeddings", scaling, 1, optional=True)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        if high <= low:
            raise InvalidValueError(
                f"{scaling}: `high_freq_factor`={high} must be greater than `low_freq_factor`={low} (llama3 scaling "
                "divides by their difference)."
            )


def _dense_decoder_config(hf_config: Any) -> dict[str, Any]:
    """Fields shared by the Qwen2 and Llama distills (pre-norm RMS, gated SiLU MLP, rotary, GQA)."""
    d_model = _get(hf_config, "hidden_size")
    n_heads = _get(hf_config, "num_attention_heads")
    d_head = _get(hf_config, "head_dim") or d_model // n_heads
    n_kv = _get(hf_config, "num_key_value_heads") or n_heads
    rope = rope_parameters(hf_config)
    max_pos = _get(hf_config, "max_position_embeddings")
    cfg: dict[str, Any] = {
        "d_model": d_model,
        "d_head": d_head,
        "n_heads": n_heads,
        # TransformerLens uses GroupedQueryAttention iff n_key_value_heads is set.
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "d_mlp": _get(hf_config, "intermediate_size"),
        "n_layers": _get(hf_config, "num_hidden_layers"),
        # The model's real context: TransformerLens 3.9 starts its rotary tables at min(n_ctx, 2048) rows and
        # extends them on demand, and builds its causal mask lazily, so n_ctx costs no memory at load.
        "n_ctx": max_pos,
        "eps": _get(hf_config, "rms_norm_eps"),
        "d_vocab": _get(hf_config, "vocab_size"),
        "act_fn": _get(hf_config, "hidden_act"),
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": float(rope["rope_theta"]),
        "final_rms": True,
        "gated_mlp": True,
        "tie_word_embeddings": bool(_get(hf_config, "tie_word_embeddings", False)),
        "initializer_range": _get(hf_config, "initializer_range", 0.02),
        # R1's chat templates emit BOS themselves and every R1 tokenizer adds it on encode.
        "tokenizer_prepends_bos": True,
        "default_prepend_bos": True,
    }
    rope_type = str(rope.get("rope_type", "default")).lower()
    if rope_type == "llama3":
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=rope.get("original_max_position_embeddings", max_pos),
            NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=rope.get("factor", 1.0),
        )
    elif rope_type not in ("default", "none"):
        raise UnsupportedArchitectureError(
            f"rope type {rope_type!r} is not supported for {_get(hf_config, 'architectures')}; "
            "r1_plugin supports the default rope and llama3 scaling for the distills."
        )
    return cfg


def hf_to_tl_config(hf_config: Any, official_name: str) -> dict[str, Any]:
    """Convert an HF config (object or dict) to a TransformerLens cfg dict, reading every field that changes the maths."""
    architectures = _get(hf_config, "architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture == "DeepseekV3ForCausalLM":
        from r1_plugin.models.deepseek_v3.config import hf_to_tl_config_dict

        cfg = hf_to_tl_config_dict(hf_config, official_name)
    elif architecture == "Qwen2ForCausalLM":
        validate_dense_config(hf_config, official_name)
        if _get(hf_config, "use_sliding_window", False):
            raise UnsupportedArchitectureError(
                f"{official_name}: sliding-window attention (use_sliding_window=true) is not supported; "
                "the R1 distills do not use it."
            )
        cfg = _dense_decoder_config(hf_config)
        cfg["use_attn_scale"] = True  # Qwen2 has q/k/v biases: TransformerLens's Attention carries b_Q/b_K/b_V.
    elif architecture == "LlamaForCausalLM":
        validate_dense_config(hf_config, official_name)
        if _get(hf_config, "attention_bias", False) or _get(hf_config, "mlp_bias", False):
            raise UnsupportedArchitectureError(
                f"{official_name}: Llama checkpoints with attention_bias/mlp_bias are not supported."
            )
        cfg = _dense_decoder_config(hf_config)
    else:
        raise UnsupportedArchitectureError(
            f"{official_name}: architecture {architecture!r} is not one r1_plugin converts "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})."
        )
    cfg["original_architecture"] = architecture
    cfg["tokenizer_name"] = official_name
    return cfg
