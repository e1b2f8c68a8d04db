"""DeepSeek-V3/R1 HookedTransformer vs transformers' DeepseekV3ForCausalLM on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.testing.deepseek_checkpoints import (
    YARN,
    hf_reference_model,
    tiny_config,
    write_tiny_checkpoint,
)

VARIANTS = {
    # q-LoRA, 2 groups (topk_group 1), dense prefix 1, correction bias, routed_scaling_factor 2.5
    "deepseek-ai/DeepSeek-R1": {},
    # no q-LoRA, dense prefix 2, YaRN with mscale, 4 groups / topk 2, half-split rope, no prob normalisation
    "deepseek-ai/DeepSeek-V3": dict(
        q_lora_rank=None, first_k_dense_replace=2, num_hidden_layers=4, rope_scaling=YARN, n_group=4, topk_group=2,
        rope_interleave=False, norm_topk_prob=False, routed_scaling_factor=1.7,
    ),
    # YaRN with q-LoRA, attention biases, mscale != mscale_all_dim, a single group
    "deepseek-ai/DeepSeek-R1-Zero": dict(
        rope_scaling={**YARN, "mscale": 0.7, "mscale_all_dim": 1.0}, attention_bias=True, n_group=1, topk_group=1,
        routed_scaling_factor=1.0,
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def loaded(request: pytest.FixtureRequest, hf_cache: object) -> tuple[HookedTransformer, torch.nn.Module, dict]:
    """(TL model via from_pretrained_no_processing, HF reference, config) for one variant."""
    name = request.param
    ck = write_tiny_checkpoint(name, tiny_config(**VARIANTS[name]), seed=len(name))
    model = HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    return model, hf_reference_model(ck.config, ck.tensors), ck.config


def test_config_and_blocks(loaded: tuple) -> None:
    model, _, config = loaded
    assert isinstance(model.cfg, DeepseekV3HookedConfig)
    assert model.cfg.n_layers == config["num_hidden_layers"]
    for i, block in enumerate(model.blocks):
        assert block.is_moe == (i >= config["first_k_dense_replace"])
        assert hasattr(block.attn, "W_Q_a") == (config["q_lora_rank"] is not None)


def test_logits_match_hf(loaded: tuple) -> None:
    model, hf, config = loaded
    tokens = torch.randint(2, config["vocab_size"], (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
    assert ref.abs().max() > 1.0  # non-trivial logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_residual_stream_matches_hf_hidden_states(loaded: tuple) -> None:
    model, hf, config = loaded
    tokens = torch.randint(2, config["vocab_size"], (1, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    for layer in range(model.cfg.n_layers - 1):  # HF's last entry is after the final norm
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=1e-4, rtol=0)


def test_routing_matches_hf_router(loaded: tuple) -> None:
    model, hf, config = loaded
    layer = config["first_k_dense_replace"]
    x = torch.randn(13, config["hidden_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, ref_w, ref_idx = hf.model.layers[layer].mlp.gate(x)
        idx, w = model.blocks[layer].mlp.route(x)
    ref = torch.zeros(13, config["n_routed_experts"]).scatter(1, ref_idx, ref_w)
    ours = torch.zeros(13, config["n_routed_experts"]).scatter(1, idx, w)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_moe_no_work_for_idle_experts(loaded: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Experts are run on contiguous per-expert row blocks; experts without tokens get zero rows."""
    from r1_plugin.models.deepseek_v3 import moe

    model, _, config = loaded
    seen: list[list[int]] = []
    original = moe.grouped_matmul

    def spy(x: torch.Tensor, w: torch.Tensor, counts: list[int], offsets: torch.Tensor) -> torch.Tensor:
        seen.append(counts)
        return original(x, w, counts, offsets)

    monkeypatch.setattr(moe, "grouped_matmul", spy)
    tokens = torch.randint(2, config["vocab_size"], (1, 3))
    with torch.no_grad():
        model(tokens)
    assert seen and all(sum(c) == 3 * config["num_experts_per_tok"] for c in seen)
    assert any(0 in c for c in seen)  # 3 tokens x k experts cannot cover all 8 experts: idle ones get no rows


def test_moe_gradients_flow(loaded: tuple) -> None:
    """With gradients on, the MoE uses the differentiable per-expert path."""
    model, _, config = loaded
    tokens = torch.randint(2, config["vocab_size"], (1, 5))
    loss = model(tokens, return_type="loss")
    loss.backward()
    layer = config["first_k_dense_replace"]
    assert model.blocks[layer].mlp.experts.W_gate.grad is not None
    model.zero_grad(set_to_none=True)
