"""The six R1 distills load by their HF ids through TransformerLens and match HF transformers on the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer, loading, supported_models

import r1_plugin
from r1_plugin.models import model_names
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
ALL_DISTILL_IDS = [spec.hf_id for spec in model_names.DISTILLS]


@pytest.fixture(scope="module")
def tiny_distills(hf_cache) -> dict[str, torch.nn.Module]:
    """A tiny random checkpoint under each of the six real distill ids; returns the HF reference models."""
    return {repo_id: write_tiny_distill(repo_id, seed=i)[0] for i, repo_id in enumerate(ALL_DISTILL_IDS)}


def _tokens(n_batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 380, (n_batch, seq), generator=gen)


@pytest.mark.parametrize("repo_id", ALL_DISTILL_IDS)
def test_every_distill_id_loads_and_matches_hf_logits(tiny_distills, repo_id):
    hf_model = tiny_distills[repo_id]
    model = HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu")
    tokens = _tokens()
    with torch.no_grad():
        ours = model(tokens)
        ref = hf_model(tokens).logits
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()


@pytest.mark.parametrize("repo_id", [QWEN, LLAMA])
def test_default_processing_keeps_log_probs(tiny_distills, repo_id):
    model = HookedTransformer.from_pretrained(repo_id, device="cpu")  # fold_ln, centering: TL defaults
    tokens = _tokens(seed=1)
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        ref = tiny_distills[repo_id](tokens).logits.log_softmax(-1)
    assert torch.allclose(ours, ref, atol=1e-3, rtol=0), (ours - ref).abs().max()


def test_llama3_rope_scaling_matters_and_matches(tiny_distills):
    """At 200 tokens (past the tiny config's original 32-token context) llama3 scaling changes the logits."""
    model = HookedTransformer.from_pretrained_no_processing(LLAMA, device="cpu")
    assert model.cfg.use_NTK_by_parts_rope and model.cfg.NTK_by_parts_factor == 8.0
    tokens = _tokens(n_batch=1, seq=200, seed=2)
    with torch.no_grad():
        ours = model(tokens)
        ref = tiny_distills[LLAMA](tokens).logits
        assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()
        unscaled_cfg = model.cfg.to_dict() | {"use_NTK_by_parts_rope": False}
        plain = HookedTransformer(unscaled_cfg, model.tokenizer, move_to_device=False)
        weights = {k: v for k, v in model.state_dict().items() if "rotary" not in k}  # keep plain's own rope tables
        plain.load_state_dict(weights, strict=False)
        assert (plain(tokens) - ref).abs().max() > 1e-2


def test_aliases_resolve_and_sae_lens_subclass_loads(tiny_distills):
    assert loading.get_official_model_name("r1-distill-llama-8b") == LLAMA
    assert loading.get_official_model_name("R1-DISTILL-QWEN-1.5B") == QWEN
    model = HookedSAETransformer.from_pretrained_no_processing("r1-distill-qwen-1.5b", device="cpu")
    assert isinstance(model, HookedSAETransformer)
    tokens = _tokens(seed=3)
    with torch.no_grad():
        assert torch.allclose(model(tokens), tiny_distills[QWEN](tokens).logits, atol=1e-4, rtol=0)


def test_qwen_has_qkv_bias_and_gqa(tiny_distills):
    model = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu")
    hf_attn = tiny_distills[QWEN].model.layers[0].self_attn
    assert model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4
    b_q = model.blocks[0].attn.b_Q.detach().reshape(-1)
    assert torch.allclose(b_q, hf_attn.q_proj.bias.detach())
    assert b_q.abs().sum() > 0


def test_registration_is_idempotent():
    before_names = list(supported_models.OFFICIAL_MODEL_NAMES)
    before_aliases = {k: list(v) for k, v in supported_models.MODEL_ALIASES.items()}
    patched = loading.convert_hf_model_config
    r1_plugin.register()
    r1_plugin.register()
    assert supported_models.OFFICIAL_MODEL_NAMES == before_names
    assert supported_models.MODEL_ALIASES == before_aliases
    assert loading.convert_hf_model_config is patched
    for spec in model_names.ALL_MODELS:
        assert supported_models.OFFICIAL_MODEL_NAMES.count(spec.hf_id) == 1


# ---------------------------------------------------------------- published configs, field by field

PUBLISHED = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "r1-distill-qwen-1.5b.json",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": "r1-distill-qwen-7b.json",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": "r1-distill-qwen-14b.json",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": "r1-distill-qwen-32b.json",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "r1-distill-llama-8b.json",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": "r1-distill-llama-70b.json",
}


@pytest.mark.parametrize("repo_id", list(PUBLISHED))
def test_published_config_converts_field_by_field(hf_cache, r1_configs, repo_id):
    """The published config.json, stored under the real id, goes through TL's config loading to the right cfg."""
    from r1_plugin.testing.hub import write_hf_repo

    raw = json.loads((r1_configs / PUBLISHED[repo_id]).read_text())
    write_hf_repo(repo_id, {"config.json": json.dumps(raw)}, revision="published")
    cfg = loading.get_pretrained_model_config(repo_id, revision="published", device="cpu")
    n_heads = raw["num_attention_heads"]
    assert cfg.original_architecture == raw["architectures"][0]
    assert cfg.d_model == raw["hidden_size"]
    assert cfg.n_heads == n_heads
    assert cfg.d_head == raw["hidden_size"] // n_heads
    assert cfg.n_key_value_heads == raw["num_key_value_heads"]  # GQA in every distill
    assert cfg.d_mlp == raw["intermediate_size"]
    assert cfg.n_layers == raw["num_hidden_layers"]
    assert cfg.eps == raw["rms_norm_eps"]
    assert cfg.d_vocab == raw["vocab_size"]
    assert cfg.act_fn == raw["hidden_act"]
    assert cfg.rotary_base == float(raw["rope_theta"])
    assert cfg.rotary_dim == cfg.d_head and cfg.positional_embedding_type == "rotary"
    assert cfg.normalization_type == "RMS" and cfg.gated_mlp and cfg.final_rms
    assert cfg.tie_word_embeddings is False and raw["tie_word_embeddings"] is False
    assert cfg.n_ctx == raw["max_position_embeddings"] == 131072
    scaling = raw.get("rope_scaling")
    if scaling:  # the Llama distills: llama3 NTK-by-parts, factor 8
        assert scaling["rope_type"] == "llama3"
        assert cfg.use_NTK_by_parts_rope
        assert cfg.NTK_by_parts_factor == scaling["factor"] == 8.0
        assert cfg.NTK_by_parts_low_freq_factor == scaling["low_freq_factor"]
        assert cfg.NTK_by_parts_high_freq_factor == scaling["high_freq_factor"]
        assert cfg.NTK_original_ctx_len == scaling["original_max_position_embeddings"]
    else:
        assert not cfg.use_NTK_by_parts_rope
    # Qwen2's q/k/v biases are loaded by TL's Qwen2 converter into b_Q/b_K/b_V (see test_qwen_has_qkv_bias_and_gqa).


def test_hf_name_sniffing_trap_is_avoided(hf_cache, r1_configs):
    """TL 3.9 treats any name containing 'llama' as a Meta Llama without reading its config (TL #897)."""
    from r1_plugin.testing.hub import write_hf_repo

    raw = json.loads((r1_configs / "r1-distill-llama-70b.json").read_text())
    write_hf_repo("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", {"config.json": json.dumps(raw)}, revision="published")
    cfg_dict = loading.convert_hf_model_config("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", revision="published")
    assert cfg_dict["d_model"] == 8192 and cfg_dict["n_layers"] == 80 and cfg_dict["n_key_value_heads"] == 8


def test_keep_fp8_false_is_accepted_and_true_is_a_clear_error_for_a_distill(tiny_distills):
    """keep_fp8 belongs to the DeepSeek-V3 loader: False (what the CLI's default means) loads the distill as usual;
    True, or a memory_per_device, says it does not apply instead of reaching transformers as an unknown kwarg."""
    from r1_plugin.errors import UnsupportedArchitectureError

    plain = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu")
    model = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", keep_fp8=False)
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(model(tokens), plain(tokens))
    for bad in ({"keep_fp8": True}, {"memory_per_device": "80GB"}):
        with pytest.raises(UnsupportedArchitectureError, match="keep_fp8/memory_per_device apply to DeepSeek-V3"):
            HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", **bad)
