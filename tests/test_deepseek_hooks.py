"""Hooks, run_with_cache, SAELens's HookedSAETransformer and weight processing on a tiny DeepSeek-V3."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import HookedSAETransformer
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer

from r1_plugin.models.deepseek_v3.block import DeepseekV3Block
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

NAME = "deepseek-ai/DeepSeek-R1-0528"
CONFIG = tiny_config(first_k_dense_replace=1, num_hidden_layers=3)


@pytest.fixture(scope="module")
def model(hf_cache: object) -> HookedTransformer:
    write_tiny_checkpoint(NAME, CONFIG, seed=7)
    return HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")


def expected_shapes(cfg: dict, layer: int, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
    """Every hook of a block and its shape (no cache, so kv_pos == pos)."""
    d, h, n = cfg["hidden_size"], cfg["num_attention_heads"], batch * pos
    qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
    p = f"blocks.{layer}."
    shapes = {
        p + "hook_resid_pre": (batch, pos, d), p + "hook_attn_out": (batch, pos, d),
        p + "hook_resid_mid": (batch, pos, d), p + "hook_mlp_out": (batch, pos, d),
        p + "hook_resid_post": (batch, pos, d),
        p + "ln1.hook_scale": (batch, pos, 1), p + "ln1.hook_normalized": (batch, pos, d),
        p + "ln2.hook_scale": (batch, pos, 1), p + "ln2.hook_normalized": (batch, pos, d),
        p + "attn.hook_q_latent": (batch, pos, cfg["q_lora_rank"]),
        p + "attn.q_a_norm.hook_scale": (batch, pos, 1), p + "attn.q_a_norm.hook_normalized": (batch, pos, cfg["q_lora_rank"]),
        p + "attn.hook_kv_latent": (batch, pos, cfg["kv_lora_rank"]),
        p + "attn.kv_a_norm.hook_scale": (batch, pos, 1), p + "attn.kv_a_norm.hook_normalized": (batch, pos, cfg["kv_lora_rank"]),
        p + "attn.hook_k_rope": (batch, pos, cfg["qk_rope_head_dim"]),
        p + "attn.hook_q": (batch, pos, h, qk), p + "attn.hook_rot_q": (batch, pos, h, qk),
        p + "attn.hook_k": (batch, pos, h, qk), p + "attn.hook_rot_k": (batch, pos, h, qk),
        p + "attn.hook_v": (batch, pos, h, cfg["v_head_dim"]),
        p + "attn.hook_attn_scores": (batch, h, pos, pos), p + "attn.hook_pattern": (batch, h, pos, pos),
        p + "attn.hook_z": (batch, pos, h, cfg["v_head_dim"]),
    }
    if layer < cfg["first_k_dense_replace"]:
        m = cfg["intermediate_size"]
        shapes.update({p + "mlp.hook_pre": (batch, pos, m), p + "mlp.hook_pre_linear": (batch, pos, m),
                       p + "mlp.hook_post": (batch, pos, m)})
    else:
        e, k, s = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]
        shapes.update({
            p + "mlp.hook_router_logits": (n, e), p + "mlp.hook_expert_weights": (n, e),
            p + "mlp.hook_expert_indices": (n, k), p + "mlp.hook_topk_weights": (n, k),
            p + "mlp.hook_routed_out": (batch, pos, d), p + "mlp.hook_shared_out": (batch, pos, d),
            p + "mlp.shared_experts.hook_pre": (batch, pos, s), p + "mlp.shared_experts.hook_pre_linear": (batch, pos, s),
            p + "mlp.shared_experts.hook_post": (batch, pos, s),
        })
    return shapes


def test_every_hook_fires_with_the_right_shape(model: HookedTransformer) -> None:
    batch, pos = 2, 7
    tokens = torch.randint(2, CONFIG["vocab_size"], (batch, pos))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (batch, pos, CONFIG["vocab_size"])
    expected: dict[str, tuple[int, ...]] = {"hook_embed": (batch, pos, CONFIG["hidden_size"])}
    for layer in range(CONFIG["num_hidden_layers"]):
        expected.update(expected_shapes(CONFIG, layer, batch, pos))
    got = {name: tuple(t.shape) for name, t in cache.items()}
    for name, shape in expected.items():
        assert got.get(name) == shape, name
    optional = ("hook_mlp_in", "attn.hook_result", "hook_tokens")
    unexpected = {n for n in model.hook_dict if n not in got and not n.endswith(optional)}
    assert not unexpected, f"hooks that never fired: {sorted(unexpected)}"
    assert not any(n.startswith("blocks.0.mlp.hook_expert") or n.startswith("blocks.0.mlp.hook_router") for n in got)


def test_expert_indices_and_weights_consistent(model: HookedTransformer) -> None:
    tokens = torch.randint(2, CONFIG["vocab_size"], (1, 9))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.1.mlp.hook"))
    idx, w = cache["blocks.1.mlp.hook_expert_indices"], cache["blocks.1.mlp.hook_topk_weights"]
    assert idx.unique(dim=1).shape == idx.shape  # k distinct experts per token
    torch.testing.assert_close(w.sum(-1), torch.full((9,), CONFIG["routed_scaling_factor"]), atol=1e-5, rtol=0)


def test_hook_edits_change_output(model: HookedTransformer) -> None:
    tokens = torch.randint(2, CONFIG["vocab_size"], (1, 6))
    with torch.no_grad():
        clean = model(tokens)
        patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_kv_latent", lambda t, hook: t * 0)])
    assert not torch.allclose(clean, patched)


def test_attention_result_hook(model: HookedTransformer) -> None:
    tokens = torch.randint(2, CONFIG["vocab_size"], (1, 5))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.2"))
        model.set_use_attn_result(True)
        try:
            _, cache2 = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.2"))
        finally:
            model.set_use_attn_result(False)
    per_head = cache2["blocks.2.attn.hook_result"]
    assert per_head.shape == (1, 5, CONFIG["num_attention_heads"], CONFIG["hidden_size"])
    torch.testing.assert_close(per_head.sum(2), cache["blocks.2.hook_attn_out"], atol=1e-5, rtol=0)


def test_hooked_sae_transformer_add_sae(hf_cache: object) -> None:
    write_tiny_checkpoint(NAME, CONFIG, seed=7)
    sae_model = HookedSAETransformer.from_pretrained_no_processing(NAME, device="cpu")
    assert isinstance(sae_model, HookedSAETransformer) and isinstance(sae_model.blocks[1], DeepseekV3Block)
    hook = "blocks.1.hook_resid_post"
    d = CONFIG["hidden_size"]
    metadata = SAEMetadata(hook_name=hook, model_name=NAME)
    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=4 * d, k=8, apply_b_dec_to_input=False, metadata=metadata))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
    tokens = torch.randint(2, CONFIG["vocab_size"], (2, 6))
    with torch.no_grad():
        clean = sae_model(tokens)
        sae_model.add_sae(sae, use_error_term=True)
        with_error_term = sae_model(tokens)
        _, cache = sae_model.run_with_cache(tokens)
        sae_model.reset_saes()
        sae_model.add_sae(sae, use_error_term=False)
        spliced = sae_model(tokens)
        sae_model.reset_saes()
    torch.testing.assert_close(with_error_term, clean, atol=1e-5, rtol=0)
    assert not torch.allclose(spliced, clean, atol=1e-3)
    acts = cache[f"{hook}.hook_sae_acts_post"]
    assert acts.shape == (2, 6, 4 * d) and ((acts != 0).sum(-1) <= 8).all()


def test_default_processing_is_exact_for_log_probs(model: HookedTransformer) -> None:
    """from_pretrained's defaults fold the RMSNorm weights and centre W_U: same log-probs, and norms lose w."""
    processed = HookedTransformer.from_pretrained(NAME, device="cpu")
    assert processed.cfg.normalization_type == "RMSPre" and not hasattr(processed.blocks[0].ln1, "w")
    tokens = torch.randint(2, CONFIG["vocab_size"], (2, 9))
    with torch.no_grad():
        a, b = model(tokens).log_softmax(-1), processed(tokens).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(processed.W_U.mean(-1), torch.zeros(CONFIG["hidden_size"]), atol=1e-6, rtol=0)


def test_refactor_factored_attn_matrices_is_refused(hf_cache: object) -> None:
    with pytest.raises(ValueError, match="from_pretrained_no_processing"):
        HookedTransformer.from_pretrained(NAME, device="cpu", refactor_factored_attn_matrices=True)


def test_process_weights_after_loading_is_exact_or_refused(model: HookedTransformer) -> None:
    """TransformerLens's own `process_weights_` / `load_and_process_state_dict` (the usual way to process a model
    loaded without processing) must fold exactly for MLA/MoE, not swap the norms for RMSNormPre and drop their
    weights, and must refuse refactor_factored_attn_matrices."""
    tokens = torch.randint(2, CONFIG["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(tokens).log_softmax(-1)
    fresh = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")
    fresh.process_weights_()
    assert fresh.cfg.normalization_type == "RMSPre"
    other = HookedTransformer(copy.deepcopy(model.cfg), model.tokenizer)
    other.load_and_process_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(other(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="from_pretrained_no_processing"):
        HookedTransformer.from_pretrained_no_processing(NAME, device="cpu").process_weights_(
            refactor_factored_attn_matrices=True
        )
