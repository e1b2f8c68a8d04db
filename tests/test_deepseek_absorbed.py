"""Weight-absorbed MLA decode (attention over the cached latents): same logits and hook values as the expanded
K/V maths and as HF, chosen by shapes alone (never by which hooks are attached)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from r1_plugin.models.deepseek_v3.attention import DeepseekV3Attention
from r1_plugin.testing.deepseek_checkpoints import (
    YARN,
    hf_reference_model,
    tiny_config,
    write_tiny_checkpoint,
)

NAME = "deepseek-ai/DeepSeek-V3"
STEP_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_resid_post")


@pytest.fixture(scope="module", params=["q_lora", "no_q_lora_yarn"])
def pair(request: pytest.FixtureRequest, hf_cache: object):
    overrides = {} if request.param == "q_lora" else dict(q_lora_rank=None, rope_scaling=YARN, first_k_dense_replace=2)
    ck = write_tiny_checkpoint(NAME, tiny_config(**overrides), seed=31)
    return HookedTransformer.from_pretrained_no_processing(NAME, device="cpu"), ck


@contextmanager
def absorption(model: HookedTransformer, enabled: bool) -> Iterator[list[bool]]:
    """Set every layer's absorb_cached; yield the per-call record of use_absorbed's answers (asked only with a past)."""
    paths: list[bool] = []
    original = DeepseekV3Attention.use_absorbed

    def spy(self: DeepseekV3Attention, n_q: int, n_past: int) -> bool:
        paths.append(original(self, n_q, n_past))
        return paths[-1]

    for block in model.blocks:
        block.attn.absorb_cached = enabled
    DeepseekV3Attention.use_absorbed = spy  # type: ignore[method-assign]
    try:
        yield paths
    finally:
        DeepseekV3Attention.use_absorbed = original  # type: ignore[method-assign]
        for block in model.blocks:
            block.attn.absorb_cached = True


def decode(model: HookedTransformer, tokens: torch.Tensor, n_prompt: int, names: list[str]) -> tuple[torch.Tensor, dict]:
    """Prefill n_prompt tokens, then feed the rest one at a time through the latent cache; logits and hook values."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", tokens.shape[0])
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [(n, lambda t, hook: seen[hook.name].append(t.detach().clone())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = [model(tokens[:, :n_prompt], past_kv_cache=cache)]
        logits += [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(n_prompt, tokens.shape[1])]
    return torch.cat(logits, dim=1), seen


def test_absorbed_decode_matches_expanded_and_hf(pair) -> None:
    model, ck = pair
    tokens = torch.randint(2, ck.config["vocab_size"], (2, 14), generator=torch.Generator().manual_seed(2))
    names = [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers) for hook in STEP_HOOKS]
    with absorption(model, True) as paths:
        absorbed, absorbed_hooks = decode(model, tokens, 6, names)
    n_layers = model.cfg.n_layers
    assert paths == [True] * (8 * n_layers)  # prefill has no past; every decode step attends to it absorbed
    with absorption(model, False) as paths:
        expanded, expanded_hooks = decode(model, tokens, 6, names)
    assert not paths
    hf = hf_reference_model(ck.config, ck.tensors)
    with torch.no_grad():
        reference = hf(tokens).logits
    torch.testing.assert_close(absorbed, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(expanded, reference, atol=1e-4, rtol=0)
    for name in names:  # pattern, scores, z and the residual fire at every step with the same values
        assert len(absorbed_hooks[name]) == len(expanded_hooks[name]) == 9
        for a, e in zip(absorbed_hooks[name], expanded_hooks[name], strict=True):
            assert a.shape == e.shape
            finite = torch.isfinite(e)
            assert torch.equal(finite, torch.isfinite(a)), name  # same causal mask
            torch.testing.assert_close(a[finite], e[finite], atol=1e-5, rtol=1e-5)


def test_absorbed_path_only_where_it_is_cheaper(pair) -> None:
    attn = pair[0].blocks[0].attn
    assert attn.use_absorbed(1, 64) and attn.use_absorbed(2, 64)
    assert not attn.use_absorbed(64, 64)  # a long chunk after a short past keeps the expanded maths


def test_absorbed_path_edits_through_pattern_and_z_hooks(pair) -> None:
    model, ck = pair
    tokens = torch.randint(2, ck.config["vocab_size"], (1, 8), generator=torch.Generator().manual_seed(4))

    def zero_z(z: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.zeros_like(z)

    outs = []
    for enabled in (True, False):
        with absorption(model, enabled), model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero_z)]):
            outs.append(decode(model, tokens, 4, [])[0])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=0)
    assert not torch.allclose(outs[0], decode(model, tokens, 4, [])[0], atol=1e-3)
