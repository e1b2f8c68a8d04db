"""Tiny random R1-distill checkpoints (Qwen2 / Llama) saved by HF transformers itself, in the published layout."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from r1_plugin.models.model_names import lookup
from r1_plugin.testing.hub import write_hf_repo
from r1_plugin.testing.tokenizers import build_tokenizer_files

# Small dims that keep every maths-relevant field of the published configs (GQA ratio, qkv bias, rope).
TINY_DIMS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_distill_config(repo_id: str, vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """An HF config.json dict for a tiny model of `repo_id`'s architecture (Qwen2 or Llama)."""
    spec = lookup(repo_id)
    if spec is None or spec.architecture not in ("Qwen2ForCausalLM", "LlamaForCausalLM"):
        raise ValueError(f"{repo_id} is not a registered R1 distill")
    cfg: dict[str, Any] = dict(
        architectures=[spec.architecture],
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=1,
        **TINY_DIMS,
    )
    if spec.architecture == "Qwen2ForCausalLM":
        cfg.update(model_type="qwen2", rope_theta=10000.0, use_sliding_window=False, sliding_window=4096)
    else:
        cfg.update(
            model_type="llama",
            rope_theta=500000.0,
            attention_bias=False,
            mlp_bias=False,
            # llama3 scaling as in the Llama distills, with a short original context so it matters at 256 tokens.
            rope_scaling=dict(
                factor=8.0, high_freq_factor=4.0, low_freq_factor=1.0, original_max_position_embeddings=32,
                rope_type="llama3",
            ),
        )
    cfg.update(overrides)
    return cfg


def build_hf_distill(config: dict[str, Any], seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The HF reference model (`Qwen2ForCausalLM` / `LlamaForCausalLM`) for `config`, randomly initialised."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    with torch.no_grad():  # HF's init uses std 0.02: widen it so tiny models give non-trivial logits
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.05)
            elif "norm" in name:
                param.uniform_(0.8, 1.2)
    return model.eval()


def write_tiny_distill(repo_id: str, seed: int = 0, **overrides: Any) -> tuple[Any, Path]:
    """Write a tiny random checkpoint + tokenizer under `repo_id` in the HF cache; returns (HF model, snapshot)."""
    spec = lookup(repo_id)
    if spec is None:
        raise ValueError(f"{repo_id} is not registered")
    tokenizer_files = build_tokenizer_files(spec.family)
    vocab = len(json.loads(tokenizer_files["tokenizer.json"])["model"]["vocab"]) + 16  # room for added tokens
    config = tiny_distill_config(spec.hf_id, vocab_size=max(vocab, 416), **overrides)
    model = build_hf_distill(config, seed)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        files: dict[str, Any] = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    files.update(tokenizer_files)
    return model, write_hf_repo(spec.hf_id, files)
