"""Gates without a model: the online scanners equal their one-shot definitions on every prefix."""

from __future__ import annotations

import random
import re

import pytest
import torch

from r1_plugin.response_prefix import ResponsePrefixSpec, find_response_prefix_end
from r1_plugin.steering import (
    AfterResponsePrefix,
    AfterText,
    Always,
    FromPosition,
    GeneratedOnly,
    ResponsePrefixScanner,
    as_gate,
)
from r1_plugin.steering.gates import NEVER, _TextScanner
from r1_plugin.steering.tracker import SequenceView

PIECES = ["<think>", "\n", "\n\n", "Okay", ",", " so", " the", " user", ".", " ", "!", "?", '"', ")", " 3", ".5",
          "\n", " asked", ". ", ".\n", "e.g", "  ", "Wait"]


def random_tokens(rng: random.Random, n: int) -> list[str]:
    """A random token-string sequence rich in sentence ends, quotes and `<think>`s."""
    return [rng.choice(PIECES) for _ in range(n)]


@pytest.mark.parametrize("spec", [
    ResponsePrefixSpec(),
    ResponsePrefixSpec(end="newline"),
    ResponsePrefixSpec(max_tokens=4),
    ResponsePrefixSpec(max_tokens=None),
])
def test_online_response_prefix_equals_one_shot_on_every_prefix(spec: ResponsePrefixSpec) -> None:
    rng = random.Random(0)
    for _ in range(300):
        toks = random_tokens(rng, rng.randint(1, 30))
        scanner = ResponsePrefixScanner(spec)
        for p, piece in enumerate(toks):
            online = scanner.end_at(piece, p)
            one_shot = find_response_prefix_end(toks[: p + 1], spec)
            if one_shot is not None:
                assert online == one_shot, (toks[: p + 1], online, one_shot)
                break  # the gate is decided at the first prefix that decides the end
            assert online is None, (toks[: p + 1], online)


def test_response_prefix_gate_opens_after_the_end_or_when_decidable() -> None:
    gate = AfterResponsePrefix()
    # "." is decided only when the next token brings the space: open at that token (the one after the end).
    assert gate.reference_open_from(["<think>", "\n", "Okay", ".", " So", " then"], 0) == 4
    # ".\n" decides itself: open at the next token.
    assert gate.reference_open_from(["<think>", "\n", "Okay", ".\n", "So"], 0) == 4
    # A closing quote delays the decision: the token after the quote is the first that can be steered.
    assert gate.reference_open_from(["<think>", "Hi", ".", '"', " So", " x"], 0) == 4
    assert gate.reference_open_from(["no", " think", "."], 0) is None
    assert AfterResponsePrefix(max_tokens=2).reference_open_from(["<think>", "a", "b", "c", "d"], 0) == 3


def test_after_text_online_equals_reference() -> None:
    rng = random.Random(1)
    for pattern, regex in [(" user", False), ("so the", False), (r"\.(?=\s)", True), (r"Wait|asked", True)]:
        gate = AfterText(pattern, regex=regex)
        for _ in range(200):
            toks = random_tokens(rng, rng.randint(1, 20))
            scanner = _TextScanner(pattern, regex)
            online = next((hit for p, t in enumerate(toks) if (hit := scanner.push(t, p)) is not None), None)
            ref = gate.reference_open_from(toks, 0)
            if ref is None:
                assert online is None or online >= len(toks)
            else:
                assert online == ref


def view(batch: int, offset: int, n: int, pads: list[int], prompt: int) -> SequenceView:
    """A hand-made view (no model)."""
    return SequenceView(offset, n, None, torch.tensor(pads), prompt, seq_id=1, forward_id=1)


def test_position_gates_are_per_row_on_real_positions() -> None:
    v = view(3, 10, 1, [0, 2, 5], prompt=8)
    assert Always().runner(None).open_from(v).tolist() == [0, 0, 0]
    assert FromPosition(6).runner(None).open_from(v).tolist() == [6, 6, 6]
    assert GeneratedOnly().runner(None).open_from(v).tolist() == [8, 6, 3]
    assert v.real_positions().tolist() == [[10], [8], [5]]
    with pytest.raises(ValueError):
        FromPosition(-1)


def test_as_gate_spellings() -> None:
    assert isinstance(as_gate(None), AfterResponsePrefix)
    assert as_gate("prefix:newline:12").spec == ResponsePrefixSpec(end="newline", max_tokens=12)
    assert as_gate(5).position == 5 and as_gate("pos:7").position == 7
    assert isinstance(as_gate("always"), Always) and isinstance(as_gate("generated"), GeneratedOnly)
    assert as_gate("text:so the").pattern == "so the"
    assert as_gate("regex:a+b").regex
    assert AfterText(re.compile(r"\d")).regex
    with pytest.raises(ValueError, match="unknown gate"):
        as_gate("sometimes")
    assert NEVER > 10**15


def test_a_bad_regex_gate_is_a_clear_package_error() -> None:
    """`regex:(` and `AfterText("(", regex=True)` raise GatePatternError (an R1PluginError and a ValueError) naming
    the pattern and re's own message, not a raw re.error; a good pattern still compiles to the same regex."""
    from r1_plugin.errors import R1PluginError
    from r1_plugin.steering import GatePatternError

    for make in (lambda: as_gate("regex:a(b"), lambda: AfterText("a(b", regex=True)):
        with pytest.raises(GatePatternError) as info:
            make()
        err = info.value
        assert isinstance(err, R1PluginError) and isinstance(err, ValueError) and not isinstance(err, re.error)
        try:
            re.compile("a(b")
        except re.error as reference:
            assert "'a(b'" in str(err) and str(reference) in str(err) and "does not compile" in str(err)
    assert AfterText("a(b)", regex=True).pattern == "a(b)"
    assert AfterText("a(", regex=False).pattern == "a("  # plain text is never compiled


def test_after_text_matches_characters_split_across_byte_tokens() -> None:
    """A byte-level tokenizer splits '×' or '答案' over several tokens, each decoding alone to '\\ufffd'; the gate
    reads the decoded text, so it opens right after the token that completes the match (online and reference)."""
    from r1_plugin.testing.tokenizers import build_tokenizer
    from r1_plugin.token_text import text_pieces

    tok = build_tokenizer("r1")
    ids = tok("What is 4 × 6? 答案 is 24.", add_special_tokens=False)["input_ids"]
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)  # the fixture does split the characters
    assert "".join(text_pieces(tok, ids)) == tok.decode(ids)
    for pattern in ["×", "答案", "6? 答", "案 is"]:
        expected = next(p + 1 for p in range(len(ids)) if pattern in tok.decode(ids[: p + 1]))
        runner = AfterText(pattern).runner(tok)
        for n in range(1, len(ids) + 1):  # one token per forward, as in cached decoding
            v = SequenceView(n - 1, 1, torch.tensor([ids[:n]]),
                             torch.zeros(1, dtype=torch.long), 1, seq_id=1, forward_id=n)
            opened = int(runner.open_from(v)[0])
        assert opened == expected, pattern
        assert AfterText(pattern).reference_open_from(text_pieces(tok, ids), 0) == expected


class _ByteTokenizer:
    """A byte-level tokenizer stub whose tokens straddle characters (space + lead byte, tail + next lead)."""

    vocab = {0: b"Okay.", 1: b" \xe7", 2: b"\xad\x94\xe6", 3: b"\xa1\x88", 4: b" x"}  # "Okay. 答案 x"

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def batch_decode(self, seqs: list[list[int]], clean_up_tokenization_spaces: bool = False) -> list[str]:
        return [self.decode(s) for s in seqs]


def test_text_pieces_emit_complete_text_at_once_when_tokens_straddle_characters() -> None:
    """The complete part of a token's text counts at that token; only an unfinished character waits: the space
    of ' \\xe7' ends the sentence 'Okay.' at token 1, as it did before characters were joined."""
    from r1_plugin.token_text import text_pieces

    tok = _ByteTokenizer()
    ids = [0, 1, 2, 3, 4]
    assert text_pieces(tok, ids) == ["Okay.", " ", "答", "案", " x"]
    for gate, expected in [(AfterText(r"\.(?=\s)", regex=True), 2), (AfterText("答案"), 4), (AfterText(" "), 2)]:
        runner = gate.runner(tok)
        for n in range(1, len(ids) + 1):
            v = SequenceView(n - 1, 1, torch.tensor([ids[:n]]), torch.zeros(1, dtype=torch.long), 1,
                             seq_id=1, forward_id=n)
            opened = int(runner.open_from(v)[0])
        assert opened == expected, gate


class _PieceTokenizer:
    """A tokenizer stub whose token i decodes to PIECES_CLOSING[i] (no byte splits): for model-free runner tests."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(self.pieces[i] for i in ids)

    def batch_decode(self, seqs: list[list[int]], clean_up_tokenization_spaces: bool = False) -> list[str]:
        return [self.decode(s) for s in seqs]


PIECES_CLOSING = [*PIECES, "</think>", " answer"]


def closing_gates() -> list:
    from r1_plugin.steering import Thinking, Until, Window

    return [
        Thinking(),
        Thinking(max_tokens=3),
        Until("</think>"),
        Until(AfterResponsePrefix(max_tokens=4)),
        GeneratedOnly() & Until(AfterResponsePrefix()),
        Window(FromPosition(3), FromPosition(9)),
        Window(FromPosition(9), FromPosition(3)),  # closes before it opens: never steers
        Window("prefix:newline", AfterText(r"\?|!", regex=True)),
        AfterText("so") & Until(" user") & Until("Wait"),
        Until(Window(FromPosition(2), FromPosition(1))),  # the inner gate never steers: never closes
        AfterResponsePrefix(max_tokens=2) & FromPosition(6),
    ]


@pytest.mark.parametrize("gate_index", range(len(closing_gates())))
def test_closing_gates_online_equal_one_shot_and_stay_causal(gate_index: int) -> None:
    """Fed in random chunks (a prefill, then decode steps), each position's steering decision, made when it is
    processed, equals the one-shot definition on every later prefix; a closed gate never reopens."""
    from steering_reference import reference_span

    gate = closing_gates()[gate_index]
    tok = _PieceTokenizer(PIECES_CLOSING)
    rng = random.Random(gate_index)
    closed_somewhere = opened_somewhere = 0
    for _trial in range(150):
        ids = [rng.randrange(len(PIECES_CLOSING)) for _ in range(rng.randint(2, 28))]
        pieces = [PIECES_CLOSING[i] for i in ids]
        prompt = rng.randint(1, len(ids))
        runner = gate.runner(tok)
        decided: list[bool] = []
        length = 0
        for step, n in enumerate([prompt] + [1] * (len(ids) - prompt)):
            v = SequenceView(length, n, torch.tensor([ids[: length + n]]), torch.zeros(1, dtype=torch.long),
                             prompt, seq_id=1, forward_id=step + 1)
            opens, closes = runner.span(v)
            positions = range(length, length + n)
            decided += [int(opens[0]) <= p < int(closes[0]) for p in positions]
            length += n
        for p in range(len(ids)):
            for end in (p + 1, len(ids)):  # one-shot on the prefix up to p, and on the finished row
                o, c = reference_span(gate, pieces[:end], prompt)
                assert decided[p] == (o is not None and o <= p and (c is None or p < c)), (gate, pieces, p, end)
        o, c = reference_span(gate, pieces, prompt)
        if c is not None:
            closed_somewhere += 1
            assert not any(decided[c:]), "a closed gate stays closed"
        opened_somewhere += o is not None
    if gate_index not in (6, 9):
        assert opened_somewhere > 0
    if gate_index not in (9, 10):
        assert closed_somewhere > 0 or gate_index == 6


def test_closing_gate_algebra_and_spellings() -> None:
    from r1_plugin.steering import AllOf, Thinking, Until, Window

    assert Thinking() == AfterResponsePrefix() & Until("</think>") == as_gate("thinking")
    assert Window(5, "</think>") == FromPosition(5) & Until(AfterText("</think>"))
    assert Window("generated", "x") == GeneratedOnly() & Until("x")
    assert as_gate("until:</think>") == Until("</think>")
    assert as_gate("thinking:newline:12") == Thinking(end="newline", max_tokens=12)
    assert as_gate("in-prefix") == GeneratedOnly() & Until(AfterResponsePrefix())
    assert as_gate("in-prefix:8") == GeneratedOnly() & Until(AfterResponsePrefix(max_tokens=8))
    assert (Always() & (GeneratedOnly() & FromPosition(3))).gates == [Always(), GeneratedOnly(), FromPosition(3)]
    assert Thinking() != AfterResponsePrefix() & Until("</answer>")
    assert len({Thinking(), as_gate("thinking"), Until("x")}) == 2
    assert Until("x").needs_tokens and not Until(FromPosition(3)).needs_tokens and Thinking().needs_tokens
    toks = ["<think>", "\n", "Okay", ".", " So", " hmm", "</think>", " ans"]
    assert (Thinking().reference_open_from(toks, 0), Thinking().reference_close_from(toks, 0)) == (4, 7)
    assert Until(FromPosition(3)).reference_close_from(toks, 0) == 3
    assert Until(FromPosition(30)).reference_close_from(toks, 0) is None
    with pytest.raises(TypeError):
        AllOf(Always(), "prefix")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Until(3)  # type: ignore[arg-type]


def test_position_gates_close_per_row_on_real_positions() -> None:
    from r1_plugin.steering import FromPositions, Until, Window

    v = view(3, 10, 1, [0, 2, 5], prompt=8)
    opens, closes = Window("generated", FromPosition(7)).runner(None).span(v)
    assert opens.tolist() == [8, 6, 3] and closes.tolist() == [7, 7, 7]
    opens, closes = FromPositions([1, None, 4], until=[5, 2, None]).runner(None).span(v)
    assert opens.tolist() == [1, NEVER, 4] and closes.tolist() == [5, 2, NEVER]
    assert Until(GeneratedOnly()).runner(None).span(v)[1].tolist() == [8, 6, 3]
    with pytest.raises(ValueError, match="until"):
        FromPositions([1, 2], until=[3])
