"""Generation with the latent KV cache: cached == uncached == HF greedy, and the cache stores only the latent."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from r1_plugin.models.deepseek_v3.kv_cache import DeepseekLatentKVCache, LatentKVCacheEntry
from r1_plugin.testing.deepseek_checkpoints import (
    YARN,
    hf_reference_model,
    tiny_config,
    write_tiny_checkpoint,
)

NAME = "deepseek-ai/DeepSeek-R1"


@pytest.fixture(scope="module", params=["q_lora", "no_q_lora_yarn"])
def pair(request: pytest.FixtureRequest, hf_cache: object):
    overrides = {} if request.param == "q_lora" else dict(q_lora_rank=None, rope_scaling=YARN, first_k_dense_replace=2)
    ck = write_tiny_checkpoint(NAME, tiny_config(**overrides), seed=21)
    model = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")
    hf = hf_reference_model(ck.config, ck.tensors)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return model, hf, ck.config


def test_cached_equals_uncached_equals_hf_greedy(pair) -> None:
    model, hf, config = pair
    prompt = torch.randint(2, config["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        cached = model.generate(prompt, use_past_kv_cache=True, **kwargs)
        uncached = model.generate(prompt, use_past_kv_cache=False, **kwargs)
        ref = hf.generate(prompt, max_new_tokens=12, do_sample=False)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, ref)


def test_cached_forward_logits_match_full_forward(pair) -> None:
    model, _, config = pair
    tokens = torch.randint(2, config["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    with torch.no_grad():
        full = model(tokens)
        first = model(tokens[:, :8], past_kv_cache=cache)
        rest = [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(8, 12)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-4, rtol=0)


def test_init_cache_builds_latent_cache(pair) -> None:
    model, _, config = pair
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 3)
    assert isinstance(cache, DeepseekLatentKVCache)
    assert all(isinstance(e, LatentKVCacheEntry) for e in cache.entries) and len(cache.entries) == model.cfg.n_layers
    tokens = torch.randint(2, config["vocab_size"], (3, 5))
    with torch.no_grad():
        model(tokens, past_kv_cache=cache)
    width = config["kv_lora_rank"] + config["qk_rope_head_dim"]
    assert cache.entries[0].past_latent.shape == (3, 5, width)
    assert cache.entries[0].past_keys.shape[1] == 5 == cache.length
    per_token = DeepseekLatentKVCache.bytes_per_token(model.cfg)
    assert cache.nbytes() == 3 * 5 * per_token
    full = DeepseekLatentKVCache.full_kv_bytes_per_token(model.cfg)
    heads, qk = config["num_attention_heads"], config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
    assert full == model.cfg.n_layers * heads * (qk + config["v_head_dim"]) * 4


def test_generation_hooks_see_one_token_per_step(pair) -> None:
    model, _, config = pair
    seen: list[tuple[int, ...]] = []
    prompt = torch.randint(2, config["vocab_size"], (1, 6))
    hook = ("blocks.1.attn.hook_k", lambda t, hook: seen.append(tuple(t.shape)))
    with torch.no_grad(), model.hooks(fwd_hooks=[hook]):
        model.generate(prompt, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    heads, qk = config["num_attention_heads"], config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
    # hook_k covers the current forward's positions only, as in TransformerLens: the prompt, then one per step
    assert seen == [(1, 6, heads, qk), (1, 1, heads, qk), (1, 1, heads, qk)]


def test_r1_cache_is_71x_smaller() -> None:
    import json

    from conftest import R1_CONFIGS

    from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig, hf_to_tl_config_dict

    cfg_dict = hf_to_tl_config_dict(json.loads((R1_CONFIGS / "deepseek-r1.json").read_text()), NAME)
    cfg = DeepseekV3HookedConfig(**{**cfg_dict, "tokenizer_name": None, "device": "cpu", "dtype": torch.bfloat16})
    assert cfg.kv_cache_width == 576
    ratio = DeepseekLatentKVCache.full_kv_bytes_per_token(cfg) / DeepseekLatentKVCache.bytes_per_token(cfg)
    assert ratio == pytest.approx(40960 / 576)
