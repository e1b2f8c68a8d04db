"""Gated steering on a TransformerBridge equals the naive full-recompute oracle, cached and uncached, on left-padded
batches, on the R1 architecture (DeepseekV3) and both distill families, and equals the HookedTransformer built
from the same weights. SAELens-free (runs under TransformerLens 4 too)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from bridge_models import FAMILIES, chat_batch, load_pair
from steering_reference import left_pads, reference_generate_spans

from r1_plugin.drive import HookNameError, ModelDriveError, driver
from r1_plugin.steering import (
    AfterResponsePrefix,
    AfterText,
    FromPosition,
    GateNeverOpenedWarning,
    GeneratedOnly,
    Until,
    Window,
    steer,
)

pytestmark = pytest.mark.bridge

STEPS = 8
HOOK = "blocks.1.hook_resid_post"
GEN = dict(do_sample=False, verbose=False, padding_side="left", stop_at_eos=False)


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest, hf_cache: Any) -> tuple[str, Any, Any]:
    hooked, bridge = load_pair(request.param)
    return request.param, hooked, bridge


def _direction(model: Any) -> torch.Tensor:
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) * 3.0


def _add(direction: torch.Tensor, strength: float) -> Any:
    def add(act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return act + mask.unsqueeze(-1).to(act.dtype) * strength * direction

    return add


def _gates(batch: torch.Tensor, pads: list[int]) -> dict[str, Any]:
    """Opening and closing gates placed relative to this batch (its shortest real prompt)."""
    shortest = batch.shape[1] - max(pads)
    return {
        "generated_only": GeneratedOnly(),
        "from_position": FromPosition(shortest + 1),
        "response_prefix": AfterResponsePrefix(max_tokens=3),
        "after_regex": AfterText(r"Okay,\s*so", regex=True),
        "prefix_only": GeneratedOnly() & Until(AfterResponsePrefix(max_tokens=3)),
        "window_positions": Window(FromPosition(shortest), FromPosition(shortest + 4)),
    }


def test_bridge_generate_with_cache_equals_transformers_and_uncached(pair: tuple[str, Any, Any]) -> None:
    """The bridge's KV cache works (r1_plugin._patches.tl_bridge_generation): cached == uncached == transformers' own
    greedy generate on the HF model == HookedTransformer, and one forward's logits equal the HookedTransformer's."""
    family, hooked, bridge = pair
    batch = chat_batch(bridge)
    cached = bridge.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
    uncached = bridge.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=False, **GEN)
    assert torch.equal(cached, uncached), family
    mask = (torch.arange(batch.shape[1]).unsqueeze(0) >= left_pads(bridge, batch).unsqueeze(1)).long()
    with torch.no_grad():
        hf = bridge.original_model.generate(batch, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS,
                                            do_sample=False, pad_token_id=bridge.tokenizer.pad_token_id)
    if bridge.tokenizer.eos_token_id not in cached[:, batch.shape[1]:]:  # min_new_tokens only masks EOS
        assert torch.equal(cached, hf), f"{family}: transformers' own greedy output"
    if hooked is not None:
        torch.testing.assert_close(bridge(batch[:1]), hooked(batch[:1]), atol=1e-4, rtol=1e-4)
        on_hooked = hooked.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
        assert torch.equal(cached, on_hooked), family


@pytest.mark.parametrize("gate_name", ["generated_only", "from_position", "response_prefix", "after_regex",
                                       "prefix_only", "window_positions"])
def test_bridge_steering_equals_oracle_cached_and_uncached(pair: tuple[str, Any, Any], gate_name: str) -> None:
    family, hooked, bridge = pair
    batch = chat_batch(bridge)
    pads = left_pads(bridge, batch).tolist()
    gate = _gates(batch, pads)[gate_name]
    direction = _direction(bridge)
    ref, spans = reference_generate_spans(bridge, batch, STEPS, HOOK, gate, _add(direction, 2.0))
    unsteered = bridge.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
    models = [(bridge, "blocks.1.hook_out"), (bridge, HOOK)] + ([(hooked, HOOK)] if hooked is not None else [])
    for model, name in models:
        for cache in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GateNeverOpenedWarning)
                with steer(model, name, direction, 2.0, gate) as result:
                    out = model.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=cache, **GEN)
            where = f"{family} {type(model).__name__} {name} {gate!r} use_past_kv_cache={cache}"
            assert torch.equal(out, ref), where
            assert len(result.records) == 1, where
            assert list(zip(result.open_at, result.close_at)) == spans, where
            assert result.last.pads == pads
            assert not [n for n, hp in model.hook_dict.items() if hp.fwd_hooks], "steer left a hook behind"
    assert any(o is not None for o, _ in spans), f"{gate!r} should open on some row"
    assert not torch.equal(ref, unsteered), "steering must change the greedy tokens (else the test proves nothing)"


def test_bridge_compatibility_mode_and_canonical_names_on_hooked(pair: tuple[str, Any, Any]) -> None:
    """Canonical bridge names work on a HookedTransformer and TransformerLens names on a bridge in compatibility
    mode, with the same steered tokens."""
    family, hooked, bridge = pair
    if hooked is None:
        pytest.skip("no HookedTransformer in this TransformerLens")
    batch = chat_batch(bridge)
    direction = _direction(bridge)
    gate = AfterResponsePrefix(max_tokens=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with steer(hooked, "blocks.1.hook_out", direction, 2.0, gate):
            on_hooked = hooked.generate(batch, max_new_tokens=STEPS, **GEN)
        from bridge_models import folder_of

        from r1_plugin.drive import load_model

        compat = load_model(folder_of(family), "bridge", device="cpu", dtype=torch.float32)
        compat.enable_compatibility_mode(disable_warnings=True)
        with steer(compat, HOOK, direction, 2.0, gate) as result:
            on_compat = compat.generate(batch, max_new_tokens=STEPS, **GEN)
    assert torch.equal(on_hooked, on_compat), family
    assert result.opened


def test_driver_facts_agree(pair: tuple[str, Any, Any]) -> None:
    family, hooked, bridge = pair
    if hooked is None:
        pytest.skip("no HookedTransformer in this TransformerLens")
    h, b = driver(hooked), driver(bridge)
    assert (h.kind, b.kind) == ("hooked", "bridge")
    assert h.n_layers == b.n_layers and h.d_vocab == b.d_vocab
    assert sorted(h.pattern_hook_names()) == sorted(b.pattern_hook_names()) == list(range(h.n_layers))
    assert b.hook_name("blocks.0.hook_resid_pre") in ("blocks.0.hook_resid_pre", "blocks.0.hook_in")
    assert h.hook_name("blocks.0.hook_in") == "blocks.0.hook_resid_pre"
    assert b.same_hook("blocks.1.hook_resid_post", "blocks.1.hook_out")
    for text in ("What is 2+2?", "Hello"):
        assert torch.equal(h.prompt_tokens(text), b.prompt_tokens(text))
        chat_text = h.decode(h.prompt_tokens(text)[0])
        assert torch.equal(b.prompt_tokens(chat_text), h.prompt_tokens(text)), "R1 chat text is encoded as is"
    with pytest.raises(HookNameError, match="not a hook"):
        b.hook_name("blocks.99.hook_resid_post")


def test_a_model_without_hooks_is_a_clear_error() -> None:
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ModelDriveError, match="HookedTransformer .*TransformerBridge"):
        with steer(model, "blocks.0.hook_resid_post", torch.ones(4), 1.0):
            pass
