"""The published R1 config on the meta device: same parameter count as transformers' DeepseekV3ForCausalLM."""

from __future__ import annotations

import json

import torch
from conftest import R1_CONFIGS
from transformer_lens import HookedTransformer

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig, hf_to_tl_config_dict

R1_PARAMS = 671_026_404_352


def test_r1_parameter_count_matches_hf_on_meta() -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = json.loads((R1_CONFIGS / "deepseek-r1.json").read_text())
    with torch.device("meta"):
        hf = DeepseekV3ForCausalLM(DeepseekV3Config(**{k: v for k, v in config.items() if k != "quantization_config"}))
    hf_count = sum(p.numel() for p in hf.parameters())
    assert hf_count == R1_PARAMS

    cfg_dict = hf_to_tl_config_dict(config, "deepseek-ai/DeepSeek-R1")
    cfg = DeepseekV3HookedConfig(**{**cfg_dict, "tokenizer_name": None, "device": "cpu", "dtype": torch.bfloat16})
    with torch.device("meta"):
        model = HookedTransformer(cfg, move_to_device=False)
    assert all(p.device.type == "meta" for p in model.parameters())
    # TL's Unembed carries a zero bias b_U [d_vocab] that HF's lm_head lacks; everything else is one-to-one.
    ours = sum(p.numel() for p in model.parameters()) - model.unembed.b_U.numel()
    assert ours == hf_count
    embeddings = 2 * config["vocab_size"] * config["hidden_size"] + config["hidden_size"]
    assert cfg.n_params == hf_count - embeddings  # cfg.n_params counts the blocks, as TL does
    assert sum(isinstance(b.mlp, torch.nn.Module) and b.is_moe for b in model.blocks) == 58
