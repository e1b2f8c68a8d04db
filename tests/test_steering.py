"""Gated steering is exact under KV-cache generation: `steer` + `generate` (cached and uncached) == a naive oracle
that re-runs the whole sequence each step and adds the direction by hand at the gated positions."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from steering_reference import left_pads, reference_generate, reference_generate_spans
from transformer_lens import HookedTransformer

from r1_plugin._patches.tl_generation import OBSERVER_ATTR
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
    assert OBSERVER_ATTR not in model.__dict__
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
    from r1_plugin.chat import r1_chat_batch

    model = load(LLAMA)
    texts = [format_r1_prompt(model, "Hi"), format_r1_prompt(model, "What is two plus two, really, friend?")]
    tokens = left_padded(model, texts)
    assert torch.equal(r1_chat_batch(model, ["Hi", "What is two plus two, really, friend?"]).tokens, tokens)
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
            assert OBSERVER_ATTR in qwen.__dict__  # still held by the outer block
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


def stream(model: HookedTransformer, tokens: torch.Tensor, cache: bool, steps: int = STEPS) -> torch.Tensor:
    """`generate_stream`'s yields joined back into `[batch, seq + steps]` (several yields of 3 tokens)."""
    chunks = list(model.generate_stream(tokens, max_new_tokens=steps, max_tokens_per_yield=3, use_past_kv_cache=cache,
                                        **GEN))
    assert len(chunks) > 2
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("gate_name", ["generated_only", "response_prefix", "after_regex", "prefix_only",
                                       "thinking_and_position"])
def test_generate_stream_cached_and_uncached_equal_naive_reference(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor, gate_name: str
) -> None:
    """`generate_stream` re-embeds the whole sequence each step when uncached: the tracker continues the sequence
    (GeneratedOnly opens, text gates scan each token once, one GateRecord), and every gate equals the oracle."""
    from r1_plugin.steering import gates as gates_module

    gate = GATES[gate_name](qwen, batch)
    ref, spans = reference_generate_spans(qwen, batch, STEPS, HOOK, gate, add_by_hand(direction, 2.0))
    pads = left_pads(qwen, batch).tolist()
    fed = []
    original_push = gates_module._Completer.push

    def counting_push(self: Any, token_id: int, piece: str) -> str:
        fed.append(token_id)
        return original_push(self, token_id, piece)

    for cache in (True, False):
        fed.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GateNeverOpenedWarning)
            gates_module._Completer.push = counting_push  # type: ignore[method-assign]
            try:
                with steer(qwen, HOOK, direction, 2.0, gate) as result:
                    out = stream(qwen, batch, cache)
            finally:
                gates_module._Completer.push = original_push  # type: ignore[method-assign]
        assert torch.equal(out, ref), f"{gate!r} use_past_kv_cache={cache}"
        assert len(result.records) == 1, "one GateRecord per generate_stream call"
        assert list(zip(result.open_at, result.close_at)) == spans
        assert result.last.prompt_length == [batch.shape[1] - p for p in pads]
        # Each real token is scanned at most once per text gate (no rescans of the whole sequence per step).
        n_text = sum(g.needs_tokens for g in getattr(gate, "gates", [gate]))
        assert len(fed) <= n_text * sum(out.shape[1] - 1 - p for p in pads)
        assert_clean(qwen)
    assert any(o is not None for o, _ in spans)


def test_generation_boundaries_and_plain_forwards(
    qwen: HookedTransformer, batch: torch.Tensor, direction: torch.Tensor
) -> None:
    """Two streams and a generate in one block give three records; repeated plain `model(seq)` calls stay separate
    sequences (a plain forward has no generated positions); an abandoned stream ends its sequence too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GateNeverOpenedWarning)
        with steer(qwen, HOOK, direction, 2.0, GeneratedOnly()) as result:
            stream(qwen, batch, cache=False, steps=7)
            stream(qwen, batch, cache=True, steps=7)
            qwen.generate(batch, max_new_tokens=4, use_past_kv_cache=False, **GEN)
            gen = qwen.generate_stream(batch, max_new_tokens=8, max_tokens_per_yield=2, use_past_kv_cache=False, **GEN)
            next(gen), next(gen)  # the prompt's forward and two decode steps have run
            gen.close()
            seq = batch[1:2]
            for _ in range(3):
                with torch.no_grad():
                    nxt = qwen(seq)[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
    pads = left_pads(qwen, batch).tolist()
    prompt = [batch.shape[1] - p for p in pads]
    assert len(result.records) == 4 + 3
    assert [r.open_at for r in result.records[:4]] == [prompt] * 4
    assert [r.length for r in result.records[:3]] == [[n + 6 for n in prompt], [n + 6 for n in prompt],
                                                     [n + 3 for n in prompt]]
    assert result.records[3].length == [n + 2 for n in prompt]  # the stream was closed after three forwards
    assert all(r.open_at == [None] for r in result.records[4:])
    assert_clean(qwen)


def test_generation_patch_is_a_pass_through_without_a_tracker(qwen: HookedTransformer, batch: torch.Tensor) -> None:
    """The class-level wrappers (r1_plugin._patches.tl_generation) change nothing for a model with no steer block:
    same tokens as the unwrapped originals, same errors, and re-applying the patch is a no-op."""
    from r1_plugin._patches import tl_generation

    tl_generation.apply()
    wrapped = {name: HookedTransformer.__dict__[name] for name in ("forward", "generate", "generate_stream")}
    tl_generation.apply()
    assert {name: HookedTransformer.__dict__[name] for name in wrapped} == wrapped
    for name, fn in wrapped.items():
        assert fn.__wrapped_original__.__name__ == name and fn.__wrapped__ is fn.__wrapped_original__
    with torch.no_grad():
        out = qwen.generate(batch, max_new_tokens=5, use_past_kv_cache=True, **GEN)
        original = wrapped["generate"].__wrapped_original__(qwen, batch, max_new_tokens=5, use_past_kv_cache=True,
                                                              **GEN)
        streamed = stream(qwen, batch, cache=True, steps=5)
        logits = qwen(batch, attention_mask=(batch != qwen.tokenizer.pad_token_id).long())
        direct = wrapped["forward"].__wrapped_original__(qwen, batch,
                                                         attention_mask=(batch != qwen.tokenizer.pad_token_id).long())
    assert torch.equal(out, original) and torch.equal(streamed, original)
    torch.testing.assert_close(logits, direct, rtol=0, atol=0)
    with pytest.raises(TypeError, match="no_such_argument"):
        qwen(batch, no_such_argument=1)
    assert OBSERVER_ATTR not in qwen.__dict__
    # Inside a steer block nothing is replaced on the instance either: only the observer is attached.
    with steer(qwen, HOOK, torch.zeros(qwen.cfg.d_model), 1.0, Always()):
        assert "forward" not in qwen.__dict__ and "generate" not in qwen.__dict__
        assert OBSERVER_ATTR in qwen.__dict__
        assert type(qwen).forward is wrapped["forward"]
    assert_clean(qwen)


def test_batched_chat_prompts_each_row_opens_at_its_own_prefix_end(
    qwen: HookedTransformer, direction: torch.Tensor
) -> None:
    """`r1_chat_batch(model, [...])` batches go straight into `generate(..., padding_side="left")`: steering equals
    the oracle, and each row's gate opens right after its own response prefix's end (`response_prefix_end`)."""
    from r1_plugin.chat import r1_chat_batch
    from r1_plugin.response_prefix import ResponsePrefixSpec, response_prefix_end

    batch = r1_chat_batch(qwen, ["Hi", "What is two plus two, really?", "Hello there friend"])
    pads = (batch.attention_mask == 0).sum(-1).tolist()
    assert pads == left_pads(qwen, batch.tokens).tolist() and len(set(pads)) == 3
    for gate in (AfterResponsePrefix(max_tokens=3), Thinking(max_tokens=3)):
        ref, spans = reference_generate_spans(qwen, batch.tokens, STEPS, HOOK, gate, add_by_hand(direction, 2.0))
        with steer(qwen, HOOK, direction, 2.0, gate) as result:
            out = qwen.generate(batch.tokens, max_new_tokens=STEPS, use_past_kv_cache=True, **GEN)
        assert torch.equal(out, ref)
        assert list(zip(result.open_at, result.close_at)) == spans
        for row, opened in enumerate(result.open_at):
            real = out[row, pads[row] :]
            end = response_prefix_end(qwen, real, ResponsePrefixSpec(max_tokens=3))
            assert opened is not None and end is not None and opened >= end + 1
            # It opens right after the end, or at the first token that decides it if that is later.
            assert opened == end + 1 or response_prefix_end(qwen, real[:opened], ResponsePrefixSpec(max_tokens=3)) is None
        assert len(set(result.open_at)) == 3
    assert_clean(qwen)


def test_sink_scan_on_a_batch_of_chat_prompts_equals_each_row_alone(qwen: HookedTransformer) -> None:
    """The sink tools on a left-padded `r1_chat_batch` batch: at each row's own prefix end (found per row by
    `response_prefix_end` on its real tokens), the batched attention-sink statistics equal the row's alone."""
    from r1_plugin.chat import r1_chat_batch
    from r1_plugin.response_prefix import ResponsePrefixSpec, response_prefix_end
    from r1_plugin.sinks import scan_sinks

    batch = r1_chat_batch(qwen, ["Hi", "What is two plus two, really?"])
    out = qwen.generate(batch.tokens, max_new_tokens=12, use_past_kv_cache=True, **GEN)
    mask = torch.cat([batch.attention_mask, torch.ones(2, 12, dtype=torch.long)], dim=1)
    scanned = scan_sinks(qwen, out, attention_mask=mask, min_queries=1)
    assert scanned.sinks is not None and scanned.sinks.batched
    pads = (batch.attention_mask == 0).sum(-1).tolist()
    for row in range(2):
        real = out[row : row + 1, pads[row] :]
        end = response_prefix_end(qwen, real[0], ResponsePrefixSpec(max_tokens=3))
        assert end is not None
        alone = scan_sinks(qwen, real, min_queries=1)
        assert alone.sinks is not None
        batched_row = scanned.sinks.row(row)
        torch.testing.assert_close(batched_row.alpha[..., pads[row] + end], alone.sinks.alpha[..., end],
                                   rtol=0, atol=1e-5)
        assert batched_row.alpha[..., : pads[row]].isnan().all()
    assert pads[0] != pads[1], "the rows are padded differently"
