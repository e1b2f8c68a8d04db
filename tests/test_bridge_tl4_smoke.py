"""A tiny DeepSeek-V3 folder through TransformerLens's TransformerBridge with r1_plugin imported first: the same
logits as transformers' own model from the same folder, causal attention patterns, and the MLA hooks.

Imports neither SAELens nor HookedTransformer, so `make compat-tl4` runs it under TransformerLens 4 as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401  (imported first, as a user would)

pytestmark = pytest.mark.bridge


@pytest.fixture(scope="module")
def tiny_deepseek_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny DeepseekV3ForCausalLM (MLA with q-LoRA, 1 dense + 2 MoE layers) saved with R1's tokenizer."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from r1_plugin.testing.tokenizers import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-deepseek-v3")
    tokenizer = build_tokenizer("r1")
    config = DeepseekV3Config(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, moe_intermediate_size=24,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=3, n_group=2, topk_group=1, first_k_dense_replace=1, q_lora_rank=24, kv_lora_rank=20,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, max_position_embeddings=256,
        architectures=["DeepseekV3ForCausalLM"],
    )
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(config).float()
    with torch.no_grad():  # large enough weights that routing and attention differ between tokens
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.15)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_bridge_boots_a_tiny_deepseek_v3_with_transformers_logits(tiny_deepseek_folder: Path) -> None:
    """TransformerBridge.boot_transformers(folder) after `import r1_plugin`: logits equal transformers' (a separate
    eager-attention instance loaded from the same folder) to 1e-5, every attention pattern is causal with rows
    summing to 1, and the MLA latents have their published widths."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_deepseek_folder, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    bridge = TransformerBridge.boot_transformers(str(tiny_deepseek_folder), device="cpu", dtype=torch.float32)
    tokens = torch.tensor([[0, 5, 17, 42, 9, 3, 77, 21], [0, 8, 8, 30, 2, 64, 11, 5]])
    with torch.no_grad():
        expected = reference(tokens).logits
        logits, cache = bridge.run_with_cache(tokens)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() < 1e-5
    assert expected.std().item() > 0.1  # the comparison is not between two near-constant outputs
    n = tokens.shape[1]
    for layer in range(3):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (2, 4, n, n)
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, n), atol=1e-5)
        assert pattern.triu(1).abs().max().item() == 0.0
    assert cache["blocks.1.attn.hook_q_latent"].shape[-1] == 24
    assert cache["blocks.1.attn.hook_kv_latent"].shape[-1] == 20
