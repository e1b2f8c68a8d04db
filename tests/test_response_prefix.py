"""One definition of the response prefix's end, on every tokenizer family, with characters split across byte-level
tokens; and batched R1 prompts (`r1_chat_batch(model, [...])`) for generate with left padding."""

from __future__ import annotations

import random

import pytest
import torch
from test_sinks import forced_sink_model
from transformer_lens.utilities.tokenize_utils import get_attention_mask

from r1_plugin.chat import ChatBatch, format_r1_prompt, r1_chat_batch, r1_chat_tokens
from r1_plugin.response_prefix import (
    ResponsePrefixScanner,
    ResponsePrefixSpec,
    find_response_prefix_end,
    response_prefix_end,
)
from r1_plugin.sinks import check_response_prefix_sink
from r1_plugin.steering import AfterResponsePrefix, Thinking
from r1_plugin.steering.tracker import SequenceView
from r1_plugin.testing.tokenizers import build_tokenizer
from r1_plugin.token_text import text_pieces

FAMILIES = ["r1", "qwen", "llama"]
# U+3000 (ideographic space) and U+00A0 (no-break space) are whitespace that byte-level BPE splits into several
# tokens that decode alone to '\ufffd': the sentence end "Okay." is decided only once the space is complete.
RESPONSES = {
    "ideographic": "Okay.\u3000So the user said hi. Let me answer politely and briefly, as asked.",
    "no-break": "Hmm.\u00a0Then the user said hi. Let me answer politely and briefly, as asked.",
}


def gate_open_online(gate, tokenizer, ids: list[int]) -> int | None:
    """Where `gate` opens when fed one token per forward (cached decoding), as a real position."""
    runner = gate.runner(tokenizer)
    for n in range(1, len(ids) + 1):
        v = SequenceView(n - 1, 1, torch.tensor([ids[:n]]), torch.zeros(1, dtype=torch.long), 1, seq_id=1,
                         forward_id=n)
        opens, closes = runner.span(v)
    value = int(opens[0])
    return value if value < len(ids) else None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("response", list(RESPONSES))
def test_prefix_end_is_one_definition_with_byte_split_characters(family: str, response: str) -> None:
    tok = build_tokenizer(family)
    text = format_r1_prompt(tok, "Hi") + RESPONSES[response]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    str_tokens = [tok.decode([i]) for i in ids]
    period = next(p for p in range(len(ids)) if str_tokens[p].endswith(".") and p > str_tokens.index("<think>"))
    space_done = next(p for p in range(period + 1, len(ids)) if "\ufffd" not in tok.decode(ids[period + 1 : p + 1]))
    assert space_done > period + 1, "the fixture must split the space over several tokens"
    # The one function: the prefix ends at the period, decided when the space is complete.
    assert response_prefix_end(tok, ids) == period
    assert response_prefix_end(tok, torch.tensor([ids])) == period
    # Reading `to_str_tokens` (each token decoded alone) would miss that space: the old sink check disagreed.
    assert find_response_prefix_end(str_tokens) != period
    # The gate decides the same end online and opens where it is first decidable; its one-shot reference agrees.
    assert gate_open_online(AfterResponsePrefix(), tok, ids) == space_done == max(period + 1, space_done)
    assert AfterResponsePrefix().reference_open_from(text_pieces(tok, ids), 0) == space_done
    assert gate_open_online(Thinking(), tok, ids) == space_done
    # The sink check reports that end (a model whose only sink is at that position says YES).
    model = forced_sink_model(period, d_vocab=len(tok), n_ctx=96)
    model.tokenizer = tok  # (set_tokenizer wants a tokenizer loaded from a repo: this one is built in memory)
    check = check_response_prefix_sink(model, text)
    assert check.prefix_end == period and check.is_sink and check.n_generated == 0


@pytest.mark.parametrize("spec", [ResponsePrefixSpec(), ResponsePrefixSpec(end="newline", max_tokens=5)])
def test_online_scanner_equals_one_shot_on_byte_level_tokens(spec: ResponsePrefixSpec) -> None:
    """On random R1-like texts with multi-byte characters, every prefix's one-shot end equals the scanner fed the
    same completed pieces, and the completed pieces join to the decoded text."""
    tok = build_tokenizer("r1")
    rng = random.Random(3)
    words = ["Okay", ".", " so", "\u3000", "\u00a0", "答案", " ×", "!", "\n", " user", "?", '"', " 3.5", " e.g",
             "。", "」", "？", "！", "…", "।", "؟", "嗯"]
    for _ in range(40):
        body = "".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
        ids = tok("<think>\n" + body, add_special_tokens=False)["input_ids"]
        pieces = text_pieces(tok, ids)
        assert "".join(pieces) == tok.decode(ids)
        scanner = ResponsePrefixScanner(spec)
        for p, piece in enumerate(pieces):
            online = scanner.end_at(piece, p)
            one_shot = response_prefix_end(tok, ids[: p + 1], spec)
            assert online == one_shot, (body, p)
            if one_shot is not None:
                break


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_chat_tokens_are_left_padded_with_the_mask_generate_derives(family: str) -> None:
    tok = build_tokenizer(family)
    prompts = ["Hi", "What is two plus two, really?", "Hello"]
    batch = r1_chat_batch(tok, prompts)
    assert isinstance(batch, ChatBatch)
    width = batch.tokens.shape[1]
    for row, prompt in enumerate(prompts):
        single = r1_chat_tokens(tok, prompt)[0].tolist()  # one string keeps today's behaviour
        n_pad = width - len(single)
        assert batch.tokens[row].tolist() == [tok.pad_token_id] * n_pad + single
        assert batch.attention_mask[row].tolist() == [0] * n_pad + [1] * len(single)
        assert single.count(tok.bos_token_id) == 1
    # TransformerLens's generate(..., padding_side="left") derives exactly this mask from the pad ids.
    derived = get_attention_mask(tok, batch.tokens, prepend_bos=False, padding_side="left")
    assert torch.equal(derived, batch.attention_mask)
    assert len({int(m.sum()) for m in batch.attention_mask}) == 3
    with pytest.raises(TypeError, match="non-empty list"):
        r1_chat_batch(tok, [])
    # The old mixed call (a list to r1_chat_tokens) still returns the batch for one release, with a warning.
    with pytest.warns(DeprecationWarning, match="r1_chat_batch"):
        old = r1_chat_tokens(tok, prompts)
    assert isinstance(old, ChatBatch) and torch.equal(old.tokens, batch.tokens)
    assert torch.equal(old.attention_mask, batch.attention_mask)
    # One return type each: a tensor from r1_chat_tokens, a ChatBatch from r1_chat_batch (also for one prompt).
    assert isinstance(r1_chat_tokens(tok, "Hi"), torch.Tensor)
    one = r1_chat_batch(tok, "Hi")
    assert isinstance(one, ChatBatch) and one.tokens.tolist() == r1_chat_tokens(tok, "Hi").tolist()


# Sentence ends in the scripts R1 thinks in (it thinks in the prompt's language). Each row: the response after
# `<think>\n`, the character offset of the stop that ends the prefix, and the offset of the first character that
# decides it (the whitespace after a spaced stop; the first character after an unspaced stop's run and closers).
SCRIPTS = {
    "chinese": ("嗯，用户问的是……。我应该先回答。", 9, 10),
    "chinese-closing-quote": ("他说：「好。」然后我回答。", 5, 7),
    "chinese-run": ("什么？！好的，我来回答。", 3, 4),
    "chinese-newline-after": ("好的。\n然后", 2, 3),
    "japanese-halfwidth": ("はい｡次に", 2, 3),
    "hindi": ("ठीक है। अब उत्तर दो।", 6, 7),
    "arabic": ("هل هذا صحيح؟ نعم", 11, 12),
    "urdu": ("ٹھیک ہے۔ اب", 7, 8),
    "armenian": ("Լավ։ Հիմա", 3, 4),
    "amharic": ("እሺ። አሁን", 2, 3),
    "ellipsis": ("Hmm… Let me think.", 3, 4),
    "quote-after-period": ('He said "no." Then', 11, 13),
}


def completing_token(tok, ids: list[int], prefix_chars: int, char: int) -> int:
    """Oracle: the first token after which the decoded text holds character `char` of the response, whole."""
    for p in range(len(ids)):
        if len(tok.decode(ids[: p + 1]).rstrip("\ufffd")) > prefix_chars + char:
            return p
    raise AssertionError("character never completed")


def scanner_tokenizer(family: str, trained_on_scripts: bool):
    """The family's tokenizer; trained on the rows above, its merges cut characters and stops at other places."""
    if not trained_on_scripts:
        return build_tokenizer(family)
    corpus = [text for text, _, _ in SCRIPTS.values()] * 3
    return build_tokenizer(family, corpus=corpus, vocab_size=300)


@pytest.mark.parametrize("trained", [False, True], ids=["bytes", "merged"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_end_in_every_script_is_the_same_online_and_one_shot(family: str, trained: bool) -> None:
    """Chinese, Hindi, Arabic, Armenian, Amharic... prefixes end at their own stops (before: never, or at the
    64-token cap), with the stop split over byte tokens, and the online gate opens where the one-shot end says."""
    tok = scanner_tokenizer(family, trained)
    split_seen = False
    for name, (response, stop, decide) in SCRIPTS.items():
        head = format_r1_prompt(tok, "你好")
        text = head + response
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prefix_chars = len(tok.decode(tok(head, add_special_tokens=False)["input_ids"]))
        assert tok.decode(ids) == text
        end = completing_token(tok, ids, prefix_chars, stop)
        decided = completing_token(tok, ids, prefix_chars, decide)
        split_seen |= "\ufffd" in tok.decode([ids[end]])
        assert response_prefix_end(tok, ids) == end, name
        assert gate_open_online(AfterResponsePrefix(), tok, ids) == max(end + 1, decided), name
        assert AfterResponsePrefix().reference_open_from(text_pieces(tok, ids), 0) == max(end + 1, decided), name
        # Cut right after the stop (nothing decides it yet): undecided, unless the sequence is complete.
        cut = ids[: end + 1]
        if len(tok.decode(cut)) == prefix_chars + stop + 1:
            assert response_prefix_end(tok, cut) is None, name
            assert response_prefix_end(tok, cut, complete=True) == end, name
    if not trained:
        assert split_seen, "the fixture must split a stop over several byte tokens"


@pytest.mark.parametrize("response", ["3.5 and x", "用户问的是……那个", "wait...so x", "e.g,x", "答案是３．５吗"])
def test_stops_inside_words_and_numbers_do_not_end_the_prefix(response: str) -> None:
    tok = build_tokenizer("r1")
    ids = tok("<think>\n" + response, add_special_tokens=False)["input_ids"]
    assert response_prefix_end(tok, ids) is None
    spec = ResponsePrefixSpec(max_tokens=None)
    assert gate_open_online(AfterResponsePrefix(spec=spec), tok, ids) is None
