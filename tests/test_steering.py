"""Gated steering is exact under KV-cache generation: `steer` + `generate` (cached and uncached) == a naive oracle
that re-runs the whole sequence each step and adds the direction by hand at the gated positions."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.chat import format_r1_prompt
from r1_plugin.steering import (
    AfterResponsePrefix,
    AfterText,
    Always,
    FromPosition,
    GateNeverOpenedWarning,
    GeneratedOnly,
    Thinking,
    Until,
    Window,
    steer,
)
from r1_plugin.steering.reference import left_pads, reference_generate, reference_generate_spans
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
HOOK = "blocks.0.hook_resid_post"
STEPS = 10
GEN = dict(do_sample=False, verbose=False, padding_side="left", stop_at_eos=False)


def load(repo_id: str) -> HookedTransformer:
    """A tiny random distill through the real loading path, float32."""
    write_tiny_distill(repo_id, seed=0)
    return HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu", dtype=torch.float32)


def left_padded(model: HookedTransformer, texts: list[str]) -> torch.Tensor:
    """`[batch, seq]` left-padded ids of already-formatted texts (no extra BOS)."""
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    return torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])


def assert_clean(model: HookedTransformer) -> None:
    """No hook, wrapper or tracker left on the model."""
    assert not [name for name, hp in model.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert "_r1_steering_tracker" not in model.__dict__
    assert not model.embed._forward_pre_hooks


@pytest.fixture(scope="module")
def qwen(hf_cache: Any) -> HookedTransformer:
    return load(QWEN)


@pytest.fixture(scope="module")
def batch(qwen: HookedTransformer) -> torch.Tensor:
    """Three rows of different lengths (left padding differs); row 1 has prefilled its response prefix start."""
    texts = [
        format_r1_prompt(qwen, "Hi"),
        format_r1_prompt(qwen, "What is two plus two, really?") + "Okay, so",
        format_r1_prompt(qwen, "Hello there friend"),
    ]
    return left_padded(qwen, texts)


@pytest.fixture(scope="module")
def direction() -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3.0


def add_by_hand(direction: torch.Tensor, strength: float):
    """The naive intervention: `act + strength * direction` where the mask is set."""

    def add(act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return act + mask.unsqueeze(-1).to(act.dtype) * strength * direction

    return add


def text_gate_from_unsteered(model: HookedTransformer, tokens: torch.Tensor) -> AfterText:
    """An AfterText gate whose pattern the unsteered model writes mid-generation in row 0 (a real online test)."""
    out = model.generate(tokens, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
    piece = model.tokenizer.decode([int(out[0, tokens.shape[1] + 3])])
    return AfterText(piece)


GATES = {
    "always": lambda m, t: Always(),
    "from_position": lambda m, t: FromPosition(14),
    "generated_only": lambda m, t: GeneratedOnly(),
    "response_prefix": lambda m, t: AfterResponsePrefix(max_tokens=3),
    "response_prefix_newline": lambda m, t: AfterResponsePrefix(end="newline", max_tokens=4),
    "after_text": text_gate_from_unsteered,
    "after_regex": lambda m, t: AfterText(r"Okay,\s*so", regex=True),
    # Closing gates: each closes during generation on some row (checked below).
    "prefix_only": lambda m, t: GeneratedOnly() & Until(AfterResponsePrefix(max_tokens=3)),
    "window_positions": lambda m, t: Window(FromPosition(14), FromPosition(19)),
    "window_text": lambda m, t: Window("prefix:sentence:2", AfterText(r"(?s)<think>.{12}", regex=True)),
    "thinking_and_position": lambda m, t: Thinking(max_tokens=2) & Until(FromPosition(21)),
    "open_and_open": lambda m, t: AfterResponsePrefix(max_tokens=3) & FromPosition(17),
}
CLOSING = {"prefix_only", "window_positions", "window_text", "thinking_and_position"}


@pytest.mark.parametrize("gate_name", list(GATES))
def test_cached_and_uncached_generation_equal_naive_reference(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor, gate_name: str
) -> None:
    gate = GATES[gate_name](qwen, batch)
    ref, spans = reference_generate_spans(qwen, batch, STEPS, HOOK, gate, add_by_hand(direction, 2.0))
    thresholds = [o for o, _ in spans]
    unsteered = qwen.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
    pads = left_pads(qwen, batch).tolist()
    for cache in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GateNeverOpenedWarning)
            with steer(qwen, HOOK, direction, 2.0, gate) as result:
                out = qwen.generate(batch, max_new_tokens=STEPS, use_past_kv_cache=cache, **GEN)
        assert torch.equal(out, ref), f"{gate!r} use_past_kv_cache={cache}"
        assert len(result.records) == 1
        assert list(zip(result.open_at, result.close_at)) == spans
        assert result.last.open_at_absolute == [None if t is None else t + p for t, p in zip(thresholds, pads)]
        assert result.last.close_at_absolute == [None if c is None else c + p for (_, c), p in zip(spans, pads)]
        n_real = [out.shape[1] - 1 - p for p in pads]  # the last sampled token is never run
        assert result.last.n_steered == [0 if o is None else (n if c is None else c) - o
                                         for (o, c), n in zip(spans, n_real)]
        assert_clean(qwen)
    opened = [t for t in thresholds if t is not None]
    assert opened, f"{gate!r} should open on some row of this batch"
    assert not torch.equal(out, unsteered), "steering must change the greedy tokens (else the test proves nothing)"
    if gate_name in ("generated_only", "response_prefix"):
        assert len(set(thresholds)) == 3, "rows open at different real positions"
    if gate_name in CLOSING:
        closed = [c for c in result.close_at if c is not None]
        assert closed, f"{gate!r} should close on some row of this batch"
        prompt = [batch.shape[1] - p for p in pads]
        assert any(c is not None and c > n for (_, c), n in zip(spans, prompt)), "a row closes while generating"


def test_llama_distill_left_padding_rope_scaling(hf_cache: Any, direction: torch.Tensor) -> None:
    model = load(LLAMA)
    texts = [format_r1_prompt(model, "Hi"), format_r1_prompt(model, "What is two plus two, really, friend?")]
    tokens = left_padded(model, texts)
    gate = AfterResponsePrefix(max_tokens=2)
    ref, thresholds = reference_generate(model, tokens, STEPS, HOOK, gate, add_by_hand(direction, 2.0))
    with steer(model, HOOK, direction, 2.0, gate) as result:
        out = model.generate(tokens, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
    assert torch.equal(out, ref)
    assert result.open_at == thresholds and None not in thresholds
    assert_clean(model)


def test_never_opening_gate_is_reported(qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor) -> None:
    unsteered = qwen.generate(batch, max_new_tokens=4, use_past_kv_cache=True, **GEN)
    with pytest.warns(GateNeverOpenedWarning, match="never opened"):
        with steer(qwen, HOOK, direction, 5.0, AfterText("no such text anywhere")) as result:
            out = qwen.generate(batch, max_new_tokens=4, use_past_kv_cache=True, **GEN)
    assert torch.equal(out, unsteered)
    assert not result.opened
    assert result.last.never_opened == [0, 1, 2]
    assert result.last.n_steered == [0, 0, 0]
    assert "never" in result.summary()
    # No <think> at all: the response-prefix gate cannot open, and says so.
    plain = qwen.tokenizer("plain text without a thinking tag", return_tensors="pt")["input_ids"]
    with pytest.warns(GateNeverOpenedWarning, match="<think>"):
        with steer(qwen, HOOK, direction, 5.0, AfterResponsePrefix()):
            qwen.generate(plain, max_new_tokens=3, use_past_kv_cache=True, **GEN)
    with pytest.warns(GateNeverOpenedWarning, match="never ran"):
        with steer(qwen, HOOK, direction, 5.0, Always()):
            pass
    assert_clean(qwen)


def test_forward_run_with_cache_and_run_with_hooks(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor
) -> None:
    tokens = batch[1:2]  # no padding
    gate = FromPosition(5)
    mask = torch.arange(tokens.shape[1]) >= 5
    add = add_by_hand(direction, 1.5)

    def by_hand(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return add(act, mask.unsqueeze(0))

    with torch.no_grad():
        expected = qwen.run_with_hooks(tokens, fwd_hooks=[(HOOK, by_hand)])
        clean_logits = qwen(tokens)
        with steer(qwen, HOOK, direction, 1.5, gate):
            logits = qwen(tokens)
            cached_logits, cache = qwen.run_with_cache(tokens, names_filter=[HOOK, "blocks.0.hook_resid_pre"])
            seen: list[torch.Tensor] = []
            hooked = qwen.run_with_hooks(
                tokens, fwd_hooks=[(HOOK, lambda act, hook: seen.append(act.clone()))]
            )
            again = qwen(tokens)  # run_with_hooks' clean-up left the (permanent) steering hook in place
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(cached_logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(hooked, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    assert not torch.allclose(logits, clean_logits)
    delta = cache[HOOK] - qwen.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    torch.testing.assert_close(delta[0, 5:], (1.5 * direction).expand(tokens.shape[1] - 5, -1), rtol=1e-5, atol=1e-4)
    assert delta[0, :5].abs().max() == 0
    torch.testing.assert_close(seen[0], cache[HOOK])
    assert_clean(qwen)


def test_manual_kv_cache_chunks_use_absolute_positions(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor
) -> None:
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tokens = batch[1:2]
    with torch.no_grad(), steer(qwen, HOOK, direction, 1.0, FromPosition(9)):
        full = qwen(tokens)
        kv = TransformerLensKeyValueCache.init_cache(qwen.cfg, qwen.cfg.device, 1)
        first = qwen(tokens[:, :7], past_kv_cache=kv)
        second = qwen(tokens[:, 7:], past_kv_cache=kv)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-4, atol=1e-4)
    assert_clean(qwen)


def test_several_blocks_stack_and_exceptions_leave_model_clean(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor
) -> None:
    other = torch.randn(64, generator=torch.Generator().manual_seed(2))
    tokens = batch[1:2]
    mask_a = (torch.arange(tokens.shape[1]) >= 4).unsqueeze(0)
    mask_b = (torch.arange(tokens.shape[1]) >= 10).unsqueeze(0)

    def both(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return add_by_hand(other, -1.0)(add_by_hand(direction, 1.0)(act, mask_a), mask_b)

    with torch.no_grad():
        expected = qwen.run_with_hooks(tokens, fwd_hooks=[(HOOK, both)])
        with steer(qwen, HOOK, direction, 1.0, FromPosition(4)) as a:
            with steer(qwen, HOOK, other, -1.0, FromPosition(10)) as b:
                logits = qwen(tokens)
            assert "_r1_steering_tracker" in qwen.__dict__  # still held by the outer block
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert a.open_at == [4] and b.open_at == [10]
    assert_clean(qwen)

    with pytest.raises(RuntimeError, match="boom"):
        with steer(qwen, HOOK, direction, 1.0, Always()):
            with steer(qwen, "blocks.1.hook_resid_mid", direction, 1.0, AfterResponsePrefix()):
                qwen(tokens)
                raise RuntimeError("boom")
    assert_clean(qwen)
    torch.testing.assert_close(qwen(tokens), qwen.run_with_hooks(tokens, fwd_hooks=[]))


def test_strength_options_and_per_row_strengths(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor
) -> None:
    tokens = batch[1:2]
    unit = direction / direction.norm()
    cached = {}

    def grab(act: torch.Tensor, hook: Any) -> None:
        cached["clean"] = act.clone()

    with torch.no_grad():
        qwen.run_with_hooks(tokens, fwd_hooks=[(HOOK, grab)])
        clean = cached["clean"]
        for kwargs, expected in [
            (dict(normalize=True), clean + 3.0 * unit),
            (dict(relative=True), clean + 3.0 * clean.norm(dim=-1, keepdim=True) * unit),
        ]:
            with steer(qwen, HOOK, direction, 3.0, Always(), **kwargs):
                _, cache = qwen.run_with_cache(tokens, names_filter=[HOOK])
            torch.testing.assert_close(cache[HOOK], expected, rtol=1e-5, atol=1e-4)
        # One strength per batch row == separate runs (what sweeps batch).
        rows = batch[[0, 0, 0]]
        with steer(qwen, HOOK, direction, [0.0, 1.0, 4.0], GeneratedOnly()):
            together = qwen.generate(rows, max_new_tokens=6, use_past_kv_cache=True, **GEN)
        for i, s in enumerate([0.0, 1.0, 4.0]):
            with steer(qwen, HOOK, direction, s, GeneratedOnly()):
                alone = qwen.generate(batch[:1], max_new_tokens=6, use_past_kv_cache=True, **GEN)
            assert torch.equal(together[i : i + 1], alone)
    with pytest.raises(ValueError, match="strengths given"):
        with steer(qwen, HOOK, direction, [1.0, 2.0], Always()):
            qwen(tokens)
    with pytest.raises(ValueError, match="not a hook"):
        with steer(qwen, "blocks.9.hook_resid_post", direction, 1.0):
            pass
    with pytest.raises(ValueError, match="shape"):
        with steer(qwen, HOOK, torch.ones(3), 1.0, Always()):
            qwen(tokens)
    assert_clean(qwen)
