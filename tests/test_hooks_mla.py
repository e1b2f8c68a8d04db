"""MLA hooks mean what TransformerLens's mean (current positions, pre/post rotary), reading them never changes the
numbers, and editing them gives the same result with and without the latent KV cache."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

NAME = "deepseek-ai/DeepSeek-R1-0528"
CONFIG = tiny_config(num_hidden_layers=3)
PER_HEAD = ("attn.hook_q", "attn.hook_rot_q", "attn.hook_k", "attn.hook_rot_k", "attn.hook_v", "attn.hook_z")
Hook = tuple[str, Callable[..., object]]


@pytest.fixture(scope="module")
def checkpoint(hf_cache: object):
    return write_tiny_checkpoint(NAME, CONFIG, seed=11)


@pytest.fixture(scope="module")
def model(checkpoint) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")


@pytest.fixture(scope="module")
def model_bf16(checkpoint) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(NAME, device="cpu", dtype=torch.bfloat16)


def tokens_for(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(2, CONFIG["vocab_size"], (batch, n), generator=torch.Generator().manual_seed(seed))


def cached_logits(model: HookedTransformer, tokens: torch.Tensor, n_prompt: int, hooks: list[Hook]) -> torch.Tensor:
    """Prefill n_prompt tokens into a latent cache, then one token per forward; all logits [b, pos, vocab]."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", tokens.shape[0])
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        out = [model(tokens[:, :n_prompt], past_kv_cache=cache)]
        out += [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(n_prompt, tokens.shape[1])]
    return torch.cat(out, dim=1)


def uncached_logits(model: HookedTransformer, tokens: torch.Tensor, hooks: list[Hook]) -> torch.Tensor:
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def recorder(store: dict[str, list[torch.Tensor]]) -> Callable[..., None]:
    def read(t: torch.Tensor, hook: object) -> None:
        store.setdefault(hook.name, []).append(t.detach().clone())  # type: ignore[attr-defined]

    return read


def test_per_head_hooks_cover_current_positions_under_the_cache(model: HookedTransformer) -> None:
    """Decode steps see [batch, 1, head, d] and the same values the uncached forward has at that position."""
    tokens = tokens_for(2, 9, 1)
    names = [f"blocks.{layer}.{hook}" for layer in range(3) for hook in PER_HEAD]
    cached: dict[str, list[torch.Tensor]] = {}
    cached_logits(model, tokens, 5, [(n, recorder(cached)) for n in names])
    full: dict[str, list[torch.Tensor]] = {}
    uncached_logits(model, tokens, [(n, recorder(full)) for n in names])
    h = CONFIG["num_attention_heads"]
    for name in names:
        steps = cached[name]
        assert [t.shape[:3] for t in steps] == [(2, 5, h)] + [(2, 1, h)] * 4, name
        torch.testing.assert_close(torch.cat(steps, dim=1), full[name][0], atol=1e-5, rtol=1e-5)


def test_q_and_k_before_rotary_rot_q_and_rot_k_after_and_match_hf(model: HookedTransformer, checkpoint,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """hook_rot_q/hook_rot_k/hook_v are HF's query/key/value states; hook_q/hook_k hold the unrotated rope part,
    and the rope key (hook_k_rope, before rotary) is shared by every head."""
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_module

    tokens = tokens_for(1, 7, 2)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.1.attn.")
                                    or n == "blocks.1.ln1.hook_normalized")
    hf = hf_reference_model(checkpoint.config, checkpoint.tensors)
    seen: dict[str, torch.Tensor] = {}
    original = hf_module.eager_attention_forward

    def capture(module, query, key, value, *args, **kwargs):  # type: ignore[no-untyped-def]
        if module.layer_idx == 1:
            seen.update(q=query.transpose(1, 2), k=key.transpose(1, 2), v=value.transpose(1, 2))
        return original(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(hf_module, "eager_attention_forward", capture)
    with torch.no_grad():
        hf(tokens)
    assert seen, "transformers' eager attention was not called"
    nope, rope = CONFIG["qk_nope_head_dim"], CONFIG["qk_rope_head_dim"]
    p = "blocks.1.attn."
    for ours, theirs in (("hook_rot_q", "q"), ("hook_rot_k", "k"), ("hook_v", "v")):
        torch.testing.assert_close(cache[p + ours], seen[theirs], atol=1e-5, rtol=1e-5)
    # Before rotary: the nope parts are the rotated ones, the rope parts are not rotated.
    for pre, post in (("hook_q", "hook_rot_q"), ("hook_k", "hook_rot_k")):
        torch.testing.assert_close(cache[p + pre][..., :nope], cache[p + post][..., :nope], atol=0, rtol=0)
        assert not torch.allclose(cache[p + pre][..., nope:], cache[p + post][..., nope:], atol=1e-3)
    attn_in = cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.w
    raw_rope = (attn_in @ model.blocks[1].attn.W_KV_a)[..., -rope:]
    torch.testing.assert_close(cache[p + "hook_k_rope"], raw_rope, atol=1e-6, rtol=1e-6)
    k = cache[p + "hook_k"]
    assert torch.equal(k[..., nope:], cache[p + "hook_k_rope"][:, :, None].expand_as(k[..., nope:]))


def all_attention_hooks(model: HookedTransformer) -> list[str]:
    return [n for n in model.hook_dict if ".attn." in n]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reading_hooks_never_changes_logits(model: HookedTransformer, model_bf16: HookedTransformer,
                                            dtype: str) -> None:
    """Bitwise the same logits with read-only hooks (None-returning, identity, and TL's run_with_cache) on every
    attention hook, cached decode and uncached."""
    m = model if dtype == "float32" else model_bf16
    tokens = tokens_for(2, 12, 3)
    names = all_attention_hooks(m)
    readers: list[Hook] = [(n, recorder({})) for n in names]
    identities: list[Hook] = [(n, lambda t, hook: t) for n in names]
    plain_cached, plain_full = cached_logits(m, tokens, 4, []), uncached_logits(m, tokens, [])
    for hooks in (readers, identities):
        assert torch.equal(cached_logits(m, tokens, 4, hooks), plain_cached)
        assert torch.equal(uncached_logits(m, tokens, hooks), plain_full)
    with torch.no_grad():
        logits, _ = m.run_with_cache(tokens)
    assert torch.equal(logits, plain_full)
    if dtype == "bfloat16":  # the cached path really is different maths, so the check above is not vacuous
        assert not torch.equal(plain_cached, plain_full)


@pytest.mark.parametrize("hook", ["hook_q", "hook_k", "hook_rot_q", "hook_rot_k", "hook_v", "hook_pattern"])
def test_reading_one_hook_alone_never_changes_logits(model: HookedTransformer, hook: str) -> None:
    """The attention builds q/K head-major only while no hook reads them, and skips the per-head pre-rotary keys
    while hook_k is unread: each hook read on its own (the mixed cases) still gives bitwise the same logits, and
    the keys it sees are laid out as TransformerLens's ([batch, pos, head, d], contiguous)."""
    tokens = tokens_for(2, 12, 7)
    plain_cached, plain_full = cached_logits(model, tokens, 4, []), uncached_logits(model, tokens, [])
    seen: dict[str, list[torch.Tensor]] = {}

    def read(t: torch.Tensor, hook: object) -> None:
        assert t.is_contiguous() or hook.name.endswith("hook_pattern")  # type: ignore[attr-defined]
        recorder(seen)(t, hook)

    hooks: list[Hook] = [(f"blocks.{i}.attn.{hook}", read) for i in range(CONFIG["num_hidden_layers"])]
    assert torch.equal(uncached_logits(model, tokens, hooks), plain_full)
    assert torch.equal(cached_logits(model, tokens, 4, hooks), plain_cached)
    assert len(seen) == CONFIG["num_hidden_layers"]


def test_logits_with_autograd_equal_inference(model: HookedTransformer) -> None:
    """With autograd recording (training, attribution), the attention concatenates instead of writing into
    head-major buffers: bitwise the same logits, and gradients reach the attention weights."""
    tokens = tokens_for(2, 9, 8)
    with torch.inference_mode():
        plain = model(tokens)
    logits = model(tokens)
    assert logits.requires_grad and torch.equal(logits.detach(), plain)
    logits[:, -1].logsumexp(-1).sum().backward()
    grads = [model.blocks[0].attn.W_K_b.grad, model.blocks[0].attn.W_Q_b.grad, model.blocks[0].attn.W_KV_a.grad]
    model.zero_grad(set_to_none=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def scale_head(index: int, factor: float) -> Callable[..., torch.Tensor]:
    def edit(t: torch.Tensor, hook: object) -> torch.Tensor:
        t = t.clone()
        t[:, :, index] *= factor
        return t

    return edit


def shift_in_place(t: torch.Tensor, hook: object) -> None:
    t[:, :, 0] += 0.5  # an in-place edit that returns nothing, as activation-patching code often does


EDITS: dict[str, list[Hook]] = {
    "hook_v": [("blocks.1.attn.hook_v", scale_head(1, 0.0))],
    "hook_k": [("blocks.0.attn.hook_k", scale_head(0, 3.0)), ("blocks.2.attn.hook_k", shift_in_place)],
    "hook_rot_k": [("blocks.1.attn.hook_rot_k", scale_head(2, -1.0))],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_editing_k_or_v_is_the_same_with_and_without_the_cache(model: HookedTransformer, edit: str) -> None:
    tokens = tokens_for(2, 11, 4)
    hooks = EDITS[edit]
    clean = uncached_logits(model, tokens, [])
    full = uncached_logits(model, tokens, hooks)
    assert not torch.allclose(full, clean, atol=1e-3)  # the edit matters
    for n_prompt in (1, 5):
        torch.testing.assert_close(cached_logits(model, tokens, n_prompt, hooks), full, atol=1e-5, rtol=1e-5)


def test_edit_during_decode_only_is_kept_for_later_steps(model: HookedTransformer) -> None:
    """An edit that starts mid-generation (the hook only edits single-token forwards) keeps those positions'
    edited K/V: the same as an uncached run that edits exactly those positions."""
    tokens = tokens_for(1, 10, 5)

    def decode_only(t: torch.Tensor, hook: object) -> torch.Tensor | None:
        return t * 2.0 if t.shape[1] == 1 else None

    got = cached_logits(model, tokens, 6, [("blocks.1.attn.hook_v", decode_only)])

    def positions_6_on(t: torch.Tensor, hook: object) -> torch.Tensor:
        t = t.clone()
        t[:, 6:] *= 2.0
        return t

    expected = uncached_logits(model, tokens, [("blocks.1.attn.hook_v", positions_6_on)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, uncached_logits(model, tokens, []), atol=1e-3)


def test_edited_generation_matches_uncached_generation(model: HookedTransformer) -> None:
    prompt = tokens_for(2, 5, 6)
    outs = []
    for use_cache in (True, False):
        with model.hooks(fwd_hooks=EDITS["hook_k"] + EDITS["hook_v"]):
            outs.append(model.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False,
                                       use_past_kv_cache=use_cache))
    assert torch.equal(outs[0], outs[1])


def test_latent_cache_stays_latent_without_edits(model: HookedTransformer) -> None:
    """Reading hooks keep the cache at kv_lora_rank + rope numbers per token; an edit adds per-head K/V to the
    edited layer only."""
    tokens = tokens_for(1, 6, 7)
    names = all_attention_hooks(model)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, recorder({})) for n in names]):
        model(tokens, past_kv_cache=cache)
    assert all(entry.edited_kv is None for entry in cache.entries)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    with torch.no_grad(), model.hooks(fwd_hooks=EDITS["hook_v"]):
        model(tokens, past_kv_cache=cache)
    assert [entry.edited_kv is not None for entry in cache.entries] == [False, True, False]
    k, v = cache.entries[1].edited_kv
    assert k.shape[:3] == v.shape[:3] == (1, 6, CONFIG["num_attention_heads"])


@pytest.fixture(scope="module")
def dense_bf16(hf_cache: object) -> HookedTransformer:
    """A bfloat16 MLA model without MoE layers: a rounding difference cannot flip an expert choice here."""
    name = "deepseek-ai/DeepSeek-V3"
    write_tiny_checkpoint(name, tiny_config(num_hidden_layers=3, first_k_dense_replace=3), seed=12)
    return HookedTransformer.from_pretrained_no_processing(name, device="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_bfloat16_edits_agree_with_and_without_the_cache_to_rounding(dense_bf16: HookedTransformer,
                                                                     edit: str) -> None:
    """In bfloat16 the cached path rounds differently; an edit must not add any divergence beyond that."""
    tokens = tokens_for(2, 11, 8)
    hooks = EDITS[edit]
    clean_gap = (cached_logits(dense_bf16, tokens, 5, []) - uncached_logits(dense_bf16, tokens, [])).abs().max()
    full = uncached_logits(dense_bf16, tokens, hooks)
    edited_gap = (cached_logits(dense_bf16, tokens, 5, hooks) - full).abs().max()
    assert not torch.allclose(full, uncached_logits(dense_bf16, tokens, []), atol=0.05)
    assert edited_gap <= 2 * clean_gap + 1e-2, (edited_gap, clean_gap)


def test_frozen_cache_shares_an_edited_prefix(model: HookedTransformer) -> None:
    """TL's frozen cache (one prefix, several continuations): each continuation sees the prefix's edited K/V and
    matches the uncached run with the same hook; the frozen entries are not extended."""
    hooks = EDITS["hook_v"] + EDITS["hook_rot_k"]
    prefix, tails = tokens_for(1, 6, 9), [tokens_for(1, 3, 10), tokens_for(1, 3, 11)]
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 1)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(prefix, past_kv_cache=cache)
        cache.freeze()
        outs = [model(tail, past_kv_cache=cache) for tail in tails]
    assert cache.entries[1].edited_kv[0].shape[1] == 6 and cache.entries[1].past_latent.shape[1] == 6
    for tail, out in zip(tails, outs, strict=True):
        full = uncached_logits(model, torch.cat([prefix, tail], dim=1), hooks)[:, 6:]
        torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)
