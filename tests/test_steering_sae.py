"""Steering by SAE feature (add == decoder row, clamp/ablate through the error term) and on the DeepSeek-V3
architecture (MLA with its latent KV cache, MoE): cached generation == the naive oracle."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from steering_reference import reference_generate, reference_generate_spans
from transformer_lens import HookedTransformer

from r1_plugin.chat import format_r1_prompt
from r1_plugin.steering import (
    AfterResponsePrefix,
    AfterText,
    FromPosition,
    GateNeverOpenedWarning,
    GeneratedOnly,
    Until,
    encode_features,
    feature_direction,
    steer,
)
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
HOOK = "blocks.0.hook_resid_post"
GEN = dict(do_sample=False, verbose=False, padding_side="left", stop_at_eos=False)


def make_sae(kind: str, d_in: int, hook: str = HOOK, seed: int = 0) -> SAE:
    """An in-memory SAELens SAE with random weights and a positive encoder bias (so features fire)."""
    meta = SAEMetadata(hook_name=hook)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=96, metadata=meta) if kind == "standard" else TopKSAEConfig(
        d_in=d_in, d_sae=96, k=12, metadata=meta
    )
    sae = SAE.from_dict(cfg.to_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.2)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen) * 0.3)
        sae.b_enc.fill_(0.5)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen) * 0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def qwen(hf_cache: Any) -> HookedTransformer:
    write_tiny_distill(QWEN, seed=0)
    return HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tokens(qwen: HookedTransformer) -> torch.Tensor:
    return qwen.tokenizer(format_r1_prompt(qwen, "What is two plus two?"), add_special_tokens=False,
                          return_tensors="pt")["input_ids"]


def resid(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The activation at HOOK as the hooks downstream see it (steering included)."""
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


def test_feature_add_equals_adding_the_decoder_row(qwen: HookedTransformer, tokens: torch.Tensor) -> None:
    sae = make_sae("standard", qwen.cfg.d_model)
    gate = GeneratedOnly()
    with steer(qwen, sae=sae, feature=7, strength=4.0, gate=gate):  # hook taken from the SAE
        by_feature = qwen.generate(tokens, max_new_tokens=8, use_past_kv_cache=True, **GEN)
    with steer(qwen, HOOK, sae.W_dec[7].detach(), 4.0, gate):
        by_row = qwen.generate(tokens, max_new_tokens=8, use_past_kv_cache=True, **GEN)
    assert torch.equal(by_feature, by_row)
    row = sae.W_dec[7].detach()
    ref, _ = reference_generate(
        qwen, tokens, 8, HOOK, gate, lambda a, m: a + m.unsqueeze(-1).to(a.dtype) * 4.0 * row
    )
    assert torch.equal(by_feature, ref)
    torch.testing.assert_close(feature_direction(sae, [1, 2]), sae.W_dec[1].detach() + sae.W_dec[2].detach())
    with torch.no_grad(), steer(qwen, sae=sae, feature=3, strength=2.0, gate=FromPosition(0), normalize=True):
        steered = resid(qwen, tokens)
    with torch.no_grad():
        clean = resid(qwen, tokens)
    torch.testing.assert_close(steered - clean, (2.0 * row_unit(sae, 3)).expand_as(clean), rtol=1e-5, atol=1e-4)


def row_unit(sae: SAE, i: int) -> torch.Tensor:
    """Unit decoder row i."""
    row = sae.W_dec[i].detach()
    return row / row.norm()


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_clamp_and_ablate_through_the_error_term(qwen: HookedTransformer, tokens: torch.Tensor, kind: str) -> None:
    sae = make_sae(kind, qwen.cfg.d_model)
    with torch.no_grad():
        clean = resid(qwen, tokens)
        feats = sae.encode(clean)
        fired = int((feats[0] > 0).sum(0).argmax())  # a feature that fires on many positions
        start = 5
        with steer(qwen, sae=sae, feature=fired, strength=6.0, gate=FromPosition(start), mode="clamp"):
            clamped = resid(qwen, tokens)
        with steer(qwen, sae=sae, feature=fired, gate=FromPosition(start), mode="ablate"):
            ablated = resid(qwen, tokens)
        # By hand: x' = decode(f') + (x - decode(f)), f' = f with the feature set, at gated positions only.
        for value, got in [(6.0, clamped), (0.0, ablated)]:
            edited = feats.clone()
            edited[..., fired] = value
            expected = sae.decode(edited) + (clean - sae.decode(feats))
            torch.testing.assert_close(got[:, start:], expected[:, start:], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(got[:, :start], clean[:, :start], rtol=0, atol=0)
        assert encode_features(sae, clean, fired).shape == (1, tokens.shape[1], 1)
    assert (feats[0, start:, fired] > 0).any(), "the test feature must fire where the gate is open"
    with pytest.raises(ValueError, match="out of range"):
        with steer(qwen, sae=sae, feature=1000, strength=1.0):
            pass
    with pytest.raises(ValueError, match="mode"):
        with steer(qwen, sae=sae, feature=1, mode="multiply"):
            pass


def test_deepseek_v3_architecture_cached_generation_equals_reference(hf_cache: Any) -> None:
    """R1's own architecture (MLA + latent KV cache + MoE): the gated steering is exact there too."""
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    name = "deepseek-ai/DeepSeek-R1"
    write_tiny_checkpoint(name, tiny_config(num_hidden_layers=3), seed=5)
    model = HookedTransformer.from_pretrained_no_processing(name, device="cpu", dtype=torch.float32)
    tok = model.tokenizer
    texts = [format_r1_prompt(model, "Hi"), format_r1_prompt(model, "What is two plus two, really?") + "Okay"]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    tokens = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
    hook = "blocks.2.hook_resid_post"  # after an MoE layer, like R1's layer 37
    vec = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    unsteered = model.generate(tokens, max_new_tokens=8, use_past_kv_cache=True, **GEN)
    closing = GeneratedOnly() & Until(AfterText(r"(?s)<think>.{10}", regex=True))
    for gate in (AfterResponsePrefix(max_tokens=2), GeneratedOnly(), closing):
        ref, spans = reference_generate_spans(
            model, tokens, 8, hook, gate, lambda a, m: a + m.unsqueeze(-1).to(a.dtype) * 3.0 * vec
        )
        thresholds = [o for o, _ in spans]
        for cache in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("error", GateNeverOpenedWarning)
                with steer(model, hook, vec, 3.0, gate) as result:
                    out = model.generate(tokens, max_new_tokens=8, use_past_kv_cache=cache, **GEN)
            assert torch.equal(out, ref), f"{gate!r} cache={cache}"
            assert list(zip(result.open_at, result.close_at)) == spans
        assert len(set(thresholds)) == 2
        if gate is closing:
            assert None not in result.close_at, "the closing gate closes on both rows while generating"
            for cache in (True, False):  # generate_stream too (uncached, it re-embeds the whole sequence)
                with steer(model, hook, vec, 3.0, gate) as result:
                    chunks = list(model.generate_stream(tokens, max_new_tokens=8, max_tokens_per_yield=3,
                                                        use_past_kv_cache=cache, **GEN))
                assert torch.equal(torch.cat(chunks, dim=1), ref), f"generate_stream cache={cache}"
                assert len(result.records) == 1 and list(zip(result.open_at, result.close_at)) == spans
        assert not torch.equal(out, unsteered)
    assert not [n for n, hp in model.hook_dict.items() if hp.fwd_hooks]
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_steering_a_hooked_sae_transformer_with_the_sae_attached(hf_cache: Any, tokens: torch.Tensor,
                                                                   mode: str) -> None:
    """SAELens's `HookedSAETransformer.add_sae` splices the SAE in at its hook, whose name then only exists as
    `<hook>.hook_sae_*`: steering by that SAE (hook taken from it) steers the SAE's output, and with the error
    term that equals steering the plain model."""
    from sae_lens import HookedSAETransformer

    write_tiny_distill(QWEN, seed=0)
    model = HookedSAETransformer.from_pretrained_no_processing(QWEN, device="cpu", dtype=torch.float32)
    sae = make_sae("standard", model.cfg.d_model)
    kwargs = dict(sae=sae, feature=7, strength=6.0, mode=mode, gate=GeneratedOnly())
    with torch.no_grad():
        with steer(model, **kwargs):
            want = model.generate(tokens, max_new_tokens=6, **GEN)
        model.add_sae(sae, use_error_term=True)
        try:
            with steer(model, **kwargs) as result:
                got = model.generate(tokens, max_new_tokens=6, **GEN)
        finally:
            model.reset_saes()
    assert result.hook_name == f"{HOOK}.hook_sae_output"
    assert result.open_at == [tokens.shape[1]]
    assert torch.equal(got, want)
