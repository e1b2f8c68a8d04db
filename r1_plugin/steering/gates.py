"""Gates: where in a sequence steering is applied, decided online as tokens arrive.

Every gate is a per-row threshold on *real* positions: a row's real positions count its own tokens from 0 (the
prompt's first real token), skipping left padding, over the whole sequence (prompt + generated). A gate opens
at a position `open_from` and stays open; steering is added at every real position >= `open_from`.

Gates are causal: whether position p is open depends only on tokens 0..p. That is what makes cached generation
exact (a position is processed once, when its token arrives, and cannot be revisited). Content gates are
therefore defined on prefixes: `AfterText` opens right after the first token whose arrival makes the decoded
text contain a match; `AfterResponsePrefix` opens after the token that ends R1's response prefix, or at the
first position where that end is decidable if later (a sentence end needs the following whitespace, which can
come with the next token). `reference_open_from` computes the same thresholds one-shot from a finished sequence
(the naive oracle the tests compare against).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from r1_plugin.response_prefix import THINK_TOKEN, ResponsePrefixSpec, find_response_prefix_end
from r1_plugin.steering.tracker import SequenceView

NEVER = 2**62  # `open_from` of a row whose gate has not opened (yet)

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")
_NEWLINE = re.compile(r"\n")


class GateRunner(ABC):
    """The per-`steer`-block state of a gate: turns each forward's `SequenceView` into per-row thresholds."""

    @abstractmethod
    def open_from(self, view: SequenceView) -> torch.Tensor:
        """`[batch]` int64 real position from which each row is steered (`NEVER` while closed)."""


class Gate(ABC):
    """A description of where to steer; `runner()` makes the stateful evaluator one `steer` block uses."""

    needs_tokens: bool = False

    @abstractmethod
    def runner(self, tokenizer: Any) -> GateRunner:
        """A fresh evaluator (state per sequence) for one `steer` block."""

    @abstractmethod
    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        """One-shot threshold for a finished row (its real tokens as strings), None if it never opens in it."""


# -- position gates (vectorised, no token ids needed) -----------------------------------------------------------
class _ConstRunner(GateRunner):
    """A gate fixed when the sequence starts: computed once per sequence, then returned as is."""

    def __init__(self, value_of: Any) -> None:
        self.value_of = value_of
        self.seq_id = -1
        self.value: torch.Tensor | None = None

    def open_from(self, view: SequenceView) -> torch.Tensor:
        if view.seq_id != self.seq_id or self.value is None:
            self.value = self.value_of(view)
            self.seq_id = view.seq_id
        return self.value


class Always(Gate):
    """Steer every real position (prompt and generated); the classic, un-gated steering."""

    def runner(self, tokenizer: Any) -> GateRunner:
        return _ConstRunner(lambda v: torch.zeros_like(v.pads))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        return 0 if len(str_tokens) > 0 else None

    def __repr__(self) -> str:
        return "Always()"


class FromPosition(Gate):
    """Steer from real position `position` on (0 = each row's first real token; left padding is not counted)."""

    def __init__(self, position: int) -> None:
        if position < 0:
            raise ValueError(f"FromPosition needs a position >= 0, got {position}")
        self.position = int(position)

    def runner(self, tokenizer: Any) -> GateRunner:
        return _ConstRunner(lambda v: torch.full_like(v.pads, self.position))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        return self.position if self.position < len(str_tokens) else None

    def __repr__(self) -> str:
        return f"FromPosition({self.position})"


class FromPositions(Gate):
    """One real start position per batch row (None: that row is not steered); e.g. to replay where a gate opened
    during generation (`SteeringResult.open_at`) in a later forward pass over the generated tokens."""

    def __init__(self, positions: Sequence[int | None]) -> None:
        self.positions = [None if p is None else int(p) for p in positions]
        if any(p is not None and p < 0 for p in self.positions):
            raise ValueError(f"FromPositions needs positions >= 0 or None, got {self.positions}")

    def runner(self, tokenizer: Any) -> GateRunner:
        values = torch.tensor([NEVER if p is None else p for p in self.positions], dtype=torch.long)

        def value_of(v: SequenceView) -> torch.Tensor:
            if v.batch != len(self.positions):
                raise ValueError(f"FromPositions has {len(self.positions)} rows but the batch has {v.batch}")
            return values.to(v.pads.device)

        return _ConstRunner(value_of)

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        raise NotImplementedError("FromPositions is per row: compare rows against `positions` directly")

    def __repr__(self) -> str:
        return f"FromPositions({self.positions})"


class GeneratedOnly(Gate):
    """Steer only generated tokens: real positions at or after the prompt (the first forward of the sequence).

    Under `generate` the prompt is its input; a plain `model(tokens)` call has no generated positions, so this
    gate never opens there.
    """

    def runner(self, tokenizer: Any) -> GateRunner:
        return _ConstRunner(lambda v: v.prompt_length - v.pads)

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        return prompt_length if prompt_length < len(str_tokens) else None

    def __repr__(self) -> str:
        return "GeneratedOnly()"


# -- content gates (online, per row, only until decided) ---------------------------------------------------------
class _TokenStrings:
    """Per-token strings, as `model.to_str_tokens` gives them, memoised by id (the decode is the slow part)."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer is None:
            raise ValueError("a text gate needs the model's tokenizer (model.tokenizer is None); set one")
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        missing = sorted({i for i in ids if i not in self.cache})
        if missing:
            texts = self.tokenizer.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)
            self.cache.update(zip(missing, texts))
        return [self.cache[i] for i in ids]


_REPLACEMENT = "\ufffd"
_MAX_STALL = 4  # a UTF-8 character has at most 4 bytes: 4 tokens without progress mean invalid bytes, not a split


class _Completer:
    """Turns per-token strings into each token's contribution to the decoded text.

    A byte-level tokenizer can split one character ('×', '答') over several tokens that each decode alone to
    '\ufffd' (and a token can hold the end of one character and the start of the next). A token contributes the
    text that is complete once it has arrived; an unfinished character waits for the token that completes it,
    so the concatenated pieces equal `tokenizer.decode(ids)`.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids since the last character boundary
        self.emitted = 0  # characters of decode(pending) already given out
        self.stalled = 0  # pushes in a row that completed nothing

    def push(self, token_id: int, piece: str) -> str:
        if not self.pending and _REPLACEMENT not in piece:
            return piece
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending, clean_up_tokenization_spaces=False)
        if text.endswith(_REPLACEMENT):
            stable = text.rstrip(_REPLACEMENT)
            out = stable[self.emitted :]
            self.stalled = 0 if out else self.stalled + 1
            if self.stalled < _MAX_STALL:
                self.emitted += len(out)
                return out
        out = text[self.emitted :]
        self.pending, self.emitted, self.stalled = [], 0, 0
        return out


def text_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Per token, the text it adds to the decoded sequence ("" for a token that leaves a character incomplete):
    what the text gates read, one-shot. Their concatenation is `tokenizer.decode(ids)` for valid UTF-8."""
    strings = _TokenStrings(tokenizer)
    completer = _Completer(tokenizer)
    ids = [int(i) for i in ids]
    return [completer.push(i, piece) for i, piece in zip(ids, strings(ids))]


class _Scanner(ABC):
    """Online decision for one row: `push` each real token string; returns `open_from` once decided."""

    @abstractmethod
    def push(self, piece: str, pos: int) -> int | None:
        """Feed the token at real position `pos`; the row's threshold once decided, else None."""


class _TextRunner(GateRunner):
    """Feeds each row's new real tokens to its scanner until every row has decided; vectorised afterwards."""

    def __init__(self, gate: Gate, tokenizer: Any, make_scanner: Any) -> None:
        self.gate = gate
        self.strings = _TokenStrings(tokenizer)
        self.make_scanner = make_scanner
        self.seq_id = -1
        self.seen = 0  # absolute length already fed
        self.scanners: list[_Scanner] = []
        self.completers: list[_Completer] = []
        self.decided: list[int | None] = []
        self.thresholds: torch.Tensor | None = None

    def _reset(self, view: SequenceView) -> None:
        self.seq_id = view.seq_id
        self.seen = 0
        self.scanners = [self.make_scanner() for _ in range(view.batch)]
        self.completers = [_Completer(self.strings.tokenizer) for _ in range(view.batch)]
        self.decided = [None] * view.batch
        self.thresholds = torch.full_like(view.pads, NEVER)

    def open_from(self, view: SequenceView) -> torch.Tensor:
        if view.seq_id != self.seq_id or view.length < self.seen:
            self._reset(view)
        assert self.thresholds is not None
        if view.length <= self.seen or all(d is not None for d in self.decided):
            self.seen = max(self.seen, view.length)
            return self.thresholds
        new_tokens = view.tokens_since(self.seen)
        if new_tokens is None:
            raise RuntimeError(
                f"{self.gate!r} needs the token ids, but this forward got embeddings whose ids were never "
                "embedded by the model: pass token ids or text to the model / generate, or use a position gate."
            )
        new = new_tokens.tolist()
        pads = view.pads.tolist()
        changed = False
        for row, ids in enumerate(new):
            if self.decided[row] is not None:
                continue
            first = self.seen
            start = max(0, pads[row] - first)  # skip left padding
            scanner, completer = self.scanners[row], self.completers[row]
            for k, (token_id, piece) in enumerate(zip(ids[start:], self.strings(ids[start:])), start=start):
                hit = scanner.push(completer.push(token_id, piece), first + k - pads[row])
                if hit is not None:
                    self.decided[row] = hit
                    changed = True
                    break
        self.seen = view.length
        if changed:
            values = [NEVER if d is None else d for d in self.decided]
            self.thresholds = torch.tensor(values, dtype=torch.long, device=view.pads.device)
        return self.thresholds


class _TextScanner(_Scanner):
    def __init__(self, pattern: str | re.Pattern[str], regex: bool) -> None:
        self.regex = re.compile(pattern) if regex or isinstance(pattern, re.Pattern) else None
        self.plain = None if self.regex is not None else str(pattern)
        self.text = ""

    def push(self, piece: str, pos: int) -> int | None:
        before = len(self.text)
        self.text += piece
        if self.plain is not None:
            # A new match must end inside the new piece: search only the tail that can hold one.
            found = self.text.find(self.plain, max(0, before - len(self.plain) + 1)) >= 0
        else:
            assert self.regex is not None
            found = self.regex.search(self.text) is not None
        return pos + 1 if found else None


class AfterText(Gate):
    """Steer at every position strictly after the token that completes the first match of `pattern`.

    The text is the row's decoded sequence, prompt included: the concatenation of its per-token strings (as
    `model.to_str_tokens` decodes them, special tokens included), except that tokens splitting one character
    (byte-level tokenizers split '×' or '答' over several tokens) count as the whole character at the token that
    completes it (`text_pieces`). `pattern` is plain text unless `regex=True` or a
    compiled `re.Pattern` is passed. "Completes" is causal: the first token whose arrival makes the text so far
    contain a match (for a lookahead such as `\\.(?=\\s)` that is the token bringing the whitespace).
    """

    needs_tokens = True

    def __init__(self, pattern: str | re.Pattern[str], regex: bool = False) -> None:
        if isinstance(pattern, str) and not pattern and not regex:
            raise ValueError("AfterText needs a non-empty pattern")
        if regex and isinstance(pattern, str):
            re.compile(pattern)  # fail early on a bad regex
        self.pattern = pattern
        self.regex = regex or isinstance(pattern, re.Pattern)

    def runner(self, tokenizer: Any) -> GateRunner:
        return _TextRunner(self, tokenizer, lambda: _TextScanner(self.pattern, self.regex))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        regex = re.compile(self.pattern) if self.regex else None
        for p in range(len(str_tokens)):
            text = "".join(str_tokens[: p + 1])
            found = regex.search(text) is not None if regex is not None else str(self.pattern) in text
            if found:
                return p + 1 if p + 1 < len(str_tokens) else None
        return None

    def __repr__(self) -> str:
        pattern = self.pattern.pattern if isinstance(self.pattern, re.Pattern) else self.pattern
        return f"AfterText({pattern!r}{', regex=True' if self.regex else ''})"


class ResponsePrefixScanner(_Scanner):
    """Online `find_response_prefix_end`: fed one token string at a time, decides at the first prefix where the
    one-shot function (on the tokens so far, `complete=False`) returns an end; equal to it by construction and
    by test (`tests/test_steering_gates.py`)."""

    def __init__(self, spec: ResponsePrefixSpec) -> None:
        self.spec = spec
        self.pattern = _SENTENCE_END if spec.end == "sentence" else _NEWLINE
        self.start: int | None = None
        self.text = ""
        self.owner: list[int] = []
        self.begun = False

    def end_at(self, piece: str, pos: int) -> int | None:
        """Feed the token at `pos`; the prefix's end token if the tokens so far decide it, else None."""
        if piece == self.spec.think_token:
            self.start, self.text, self.owner, self.begun = pos, "", [], False
            return None
        if self.start is None:
            return None
        if not self.begun:
            stripped = piece.lstrip("\n")
            if not stripped.strip():
                return None
            self.begun = True
            piece = stripped
        self.text += piece
        self.owner.extend([pos] * len(piece))
        match = self.pattern.search(self.text)
        if match is not None:
            return self.owner[match.start()]
        if self.spec.max_tokens is not None and pos - self.start >= self.spec.max_tokens:
            return pos
        return None

    def push(self, piece: str, pos: int) -> int | None:
        end = self.end_at(piece, pos)
        return None if end is None else max(end + 1, pos)


class AfterResponsePrefix(Gate):
    """R1's default gate: steer after the response prefix, the first sentence of the thinking trace after
    `<think>` ("Okay, so the user asked about ...").

    Uses the shared definition `r1_plugin.response_prefix.find_response_prefix_end` (also used by the sink
    detector). `end`: "sentence" or "newline"; `max_tokens`: the prefix ends after at most this many tokens after
    `<think>` (None: no limit). Opens at the token after the end, or at the first position where the end is
    decidable if that is later. Without a `<think>` token in the sequence it never opens (and is reported).
    """

    needs_tokens = True

    def __init__(
        self,
        end: str = "sentence",
        max_tokens: int | None = 64,
        think_token: str = THINK_TOKEN,
        spec: ResponsePrefixSpec | None = None,
    ) -> None:
        self.spec = spec or ResponsePrefixSpec(end=end, max_tokens=max_tokens, think_token=think_token)

    def runner(self, tokenizer: Any) -> GateRunner:
        return _TextRunner(self, tokenizer, lambda: ResponsePrefixScanner(self.spec))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        for p in range(len(str_tokens)):
            end = find_response_prefix_end(list(str_tokens[: p + 1]), self.spec, complete=False)
            if end is not None:
                opened = max(end + 1, p)
                return opened if opened < len(str_tokens) else None
        return None

    def __repr__(self) -> str:
        s = self.spec
        return f"AfterResponsePrefix(end={s.end!r}, max_tokens={s.max_tokens})"


def as_gate(gate: Gate | str | int | None) -> Gate:
    """A Gate from a Gate, None (AfterResponsePrefix), an int (FromPosition) or a CLI spelling.

    Spellings: "prefix", "prefix:newline", "prefix:sentence:32" (max tokens), "always", "generated",
    "pos:12", "text:<plain text>", "regex:<pattern>".
    """
    if gate is None:
        return AfterResponsePrefix()
    if isinstance(gate, Gate):
        return gate
    if isinstance(gate, int):
        return FromPosition(gate)
    kind, _, arg = str(gate).partition(":")
    kind = kind.strip().lower()
    if kind in ("prefix", "response-prefix", "after-response-prefix"):
        parts = [p for p in arg.split(":") if p]
        end = parts[0] if parts and not parts[0].isdigit() else "sentence"
        digits = [p for p in parts if p.isdigit()]
        return AfterResponsePrefix(end=end, max_tokens=int(digits[0]) if digits else 64)
    if kind == "always":
        return Always()
    if kind in ("generated", "generated-only"):
        return GeneratedOnly()
    if kind in ("pos", "position", "from"):
        return FromPosition(int(arg))
    if kind == "text":
        return AfterText(arg)
    if kind == "regex":
        return AfterText(arg, regex=True)
    raise ValueError(
        f"unknown gate {gate!r}: use prefix[:sentence|newline][:N], always, generated, pos:N, text:..., regex:..."
    )
