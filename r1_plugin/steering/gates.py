"""Gates: where in a sequence steering is applied, decided online as tokens arrive.

Every gate is a per-row interval of *real* positions: a row's real positions count its own tokens from 0 (the
prompt's first real token), skipping left padding, over the whole sequence (prompt + generated). A gate opens at
`open_from` and, for a closing gate, closes at `close_from`; steering is added at every real position p with
`open_from <= p < close_from`. A closed gate stays closed. Gates compose by intersection (`a & b`), and
`Until(x)` is open from the start until the position where `x` would open, so `Window(start, stop)` and
`Thinking()` (the response prefix's end to `</think>`) are intersections too.

Gates are causal: whether position p is open depends only on tokens 0..p. That is what makes cached generation
exact (a position is processed once, when its token arrives, and cannot be revisited). Content gates are
therefore defined on prefixes: `AfterText` opens right after the first token whose arrival makes the decoded
text contain a match; `AfterResponsePrefix` opens after the token that ends R1's response prefix, or at the
first position where that end is decidable if later (a sentence end needs the following whitespace, which can
come with the next token). `reference_open_from` computes the same thresholds one-shot from a finished sequence
(the naive oracle the tests compare against), and `reference_close_from` the closing thresholds.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from r1_plugin.errors import R1PluginError
from r1_plugin.response_prefix import (
    THINK_CLOSE,
    THINK_TOKEN,
    ResponsePrefixScanner,
    ResponsePrefixSpec,
    find_response_prefix_end,
)
from r1_plugin.steering.tracker import SequenceView
from r1_plugin.token_text import TextCompleter as _Completer
from r1_plugin.token_text import TokenStrings as _TokenStrings
from r1_plugin.token_text import text_pieces  # noqa: F401  (re-exported for callers of steering.gates)

NEVER = 2**62  # `open_from` of a row whose gate has not opened (yet)


class GatePatternError(R1PluginError, ValueError):
    """A `regex:` gate (or `AfterText(..., regex=True)`) whose pattern does not compile."""


def compile_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """`re.compile(pattern)`, with a bad pattern raised as a GatePatternError naming it and the regex error."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise GatePatternError(f"the gate's regular expression {pattern!r} does not compile: {exc}") from None


class GateRunner(ABC):
    """The per-`steer`-block state of a gate: turns each forward's `SequenceView` into per-row thresholds.

    A runner returns the *same* tensor object while its thresholds do not change (the steering hook recomputes
    its absolute thresholds only when the identity changes).
    """

    _never: torch.Tensor | None = None

    @abstractmethod
    def open_from(self, view: SequenceView) -> torch.Tensor:
        """`[batch]` int64 real position from which each row is steered (`NEVER` while not open yet)."""

    def close_from(self, view: SequenceView) -> torch.Tensor:
        """`[batch]` int64 real position from which each row is no longer steered (`NEVER`: not closed)."""
        never = self._never
        if never is None or never.shape != view.pads.shape or never.device != view.pads.device:
            never = self._never = torch.full_like(view.pads, NEVER)
        return never

    def span(self, view: SequenceView) -> tuple[torch.Tensor, torch.Tensor]:
        """(`open_from`, `close_from`) for this forward: steered where `open_from <= real position < close_from`."""
        return self.open_from(view), self.close_from(view)


class Gate(ABC):
    """A description of where to steer; `runner()` makes the stateful evaluator one `steer` block uses."""

    needs_tokens: bool = False

    @abstractmethod
    def runner(self, tokenizer: Any) -> GateRunner:
        """A fresh evaluator (state per sequence) for one `steer` block."""

    @abstractmethod
    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        """One-shot threshold for a finished row (its real tokens as strings), None if it never opens in it."""

    def reference_close_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        """One-shot closing threshold for a finished row, None if it never closes in it (gates that never close)."""
        return None

    def __and__(self, other: Gate) -> Gate:
        """The intersection: open where both gates are open."""
        if not isinstance(other, Gate):
            return NotImplemented
        return AllOf(self, other)

    def _key(self) -> tuple[Any, ...]:
        """What makes two gates equal (gates are values: same key, same positions on every sequence)."""
        return (type(self).__name__, repr(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gate) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


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


class _SpanRunner(GateRunner):
    """A gate given by two runners: one for where rows open, one for where they close."""

    def __init__(self, opens: GateRunner, closes: GateRunner) -> None:
        self.opens, self.closes = opens, closes

    def open_from(self, view: SequenceView) -> torch.Tensor:
        return self.opens.open_from(view)

    def close_from(self, view: SequenceView) -> torch.Tensor:
        return self.closes.open_from(view)


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
    during generation (`SteeringResult.open_at`) in a later forward pass over the generated tokens. `until`
    (optional, one per row, None: never) closes each row there, to replay a closing gate (`SteeringResult.close_at`).
    """

    def __init__(self, positions: Sequence[int | None], until: Sequence[int | None] | None = None) -> None:
        self.positions = [None if p is None else int(p) for p in positions]
        self.until = None if until is None else [None if p is None else int(p) for p in until]
        if any(p is not None and p < 0 for p in [*self.positions, *(self.until or [])]):
            raise ValueError(f"FromPositions needs positions >= 0 or None, got {self.positions}, until={self.until}")
        if self.until is not None and len(self.until) != len(self.positions):
            raise ValueError(f"FromPositions got {len(self.positions)} positions but {len(self.until)} `until` values")

    def runner(self, tokenizer: Any) -> GateRunner:
        opens = torch.tensor([NEVER if p is None else p for p in self.positions], dtype=torch.long)
        until = self.until if self.until is not None else [None] * len(self.positions)
        closes = torch.tensor([NEVER if p is None else p for p in until], dtype=torch.long)

        def opens_of(v: SequenceView) -> torch.Tensor:
            if v.batch != len(self.positions):
                raise ValueError(f"FromPositions has {len(self.positions)} rows but the batch has {v.batch}")
            return opens.to(v.pads.device)

        return _SpanRunner(_ConstRunner(opens_of), _ConstRunner(lambda v: closes.to(v.pads.device)))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        raise NotImplementedError("FromPositions is per row: compare rows against `positions` directly")

    def __repr__(self) -> str:
        return f"FromPositions({self.positions}{'' if self.until is None else f', until={self.until}'})"


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
            compile_pattern(pattern)  # fail early on a bad regex, with the pattern named
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


class _PrefixScanner(_Scanner):
    """The gate's scanner: `ResponsePrefixScanner` deciding the end, turned into the opening position."""

    def __init__(self, spec: ResponsePrefixSpec) -> None:
        self.scanner = ResponsePrefixScanner(spec)

    def push(self, piece: str, pos: int) -> int | None:
        end = self.scanner.end_at(piece, pos)
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
        return _TextRunner(self, tokenizer, lambda: _PrefixScanner(self.spec))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        for p in range(len(str_tokens)):
            end = find_response_prefix_end(list(str_tokens[: p + 1]), self.spec, complete=False)
            if end is not None:
                opened = max(end + 1, p)
                return opened if opened < len(str_tokens) else None
        return None

    def __repr__(self) -> str:
        s = self.spec
        think = "" if s.think_token == THINK_TOKEN else f", think_token={s.think_token!r}"
        return f"AfterResponsePrefix(end={s.end!r}, max_tokens={s.max_tokens}{think})"


# -- closing and composition -------------------------------------------------------------------------------------
class _AllOfRunner(GateRunner):
    """Intersection of runners: opens at the latest opening, closes at the earliest closing (per row)."""

    def __init__(self, runners: list[GateRunner]) -> None:
        self.runners = runners
        self._inputs: list[torch.Tensor] = []
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def span(self, view: SequenceView) -> tuple[torch.Tensor, torch.Tensor]:
        spans = [r.span(view) for r in self.runners]
        flat = [t for pair in spans for t in pair]
        if self._out is None or len(flat) != len(self._inputs) or any(a is not b for a, b in zip(flat, self._inputs)):
            opens = torch.stack([o for o, _ in spans]).amax(0)
            closes = torch.stack([c for _, c in spans]).amin(0)
            self._out, self._inputs = (opens, closes), flat
        return self._out

    def open_from(self, view: SequenceView) -> torch.Tensor:
        return self.span(view)[0]

    def close_from(self, view: SequenceView) -> torch.Tensor:
        return self.span(view)[1]


class AllOf(Gate):
    """Open where every one of `gates` is open (`gate_a & gate_b`): from the latest opening to the earliest
    closing. A gate that closes stays closed, even if another part opens later."""

    def __init__(self, *gates: Gate) -> None:
        parts: list[Gate] = []
        for gate in gates:
            if not isinstance(gate, Gate):
                raise TypeError(f"AllOf combines Gates, got {type(gate).__name__} (use as_gate(...) for spellings)")
            parts.extend(gate.gates if isinstance(gate, AllOf) else [gate])
        if not parts:
            raise ValueError("AllOf needs at least one gate")
        self.gates: list[Gate] = parts
        self.needs_tokens = any(g.needs_tokens for g in parts)

    def runner(self, tokenizer: Any) -> GateRunner:
        return _AllOfRunner([g.runner(tokenizer) for g in self.gates])

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        opens = [g.reference_open_from(str_tokens, prompt_length) for g in self.gates]
        return None if any(o is None for o in opens) else max(o for o in opens if o is not None)

    def reference_close_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        closes = [c for g in self.gates if (c := g.reference_close_from(str_tokens, prompt_length)) is not None]
        return min(closes) if closes else None

    def _key(self) -> tuple[Any, ...]:
        return ("AllOf", tuple(g._key() for g in self.gates))

    def __repr__(self) -> str:
        return "(" + " & ".join(repr(g) for g in self.gates) + ")"


class _UntilRunner(GateRunner):
    """Open from position 0; closes where the inner gate first steers (its opening, unless it closed first)."""

    def __init__(self, inner: GateRunner) -> None:
        self.inner = inner
        self.zeros = _ConstRunner(lambda v: torch.zeros_like(v.pads))
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._close: torch.Tensor | None = None

    def open_from(self, view: SequenceView) -> torch.Tensor:
        return self.zeros.open_from(view)

    def close_from(self, view: SequenceView) -> torch.Tensor:
        opens, closes = self.inner.span(view)
        if self._close is None or self._inputs is None or opens is not self._inputs[0] or closes is not self._inputs[1]:
            self._close = torch.where(opens < closes, opens, torch.full_like(opens, NEVER))
            self._inputs = (opens, closes)
        return self._close


class Until(Gate):
    """Open from the start of the sequence until the position where `gate` would open; closed from there on,
    forever. A str means `AfterText(text)`: `Until("</think>")` steers up to and including the `</think>` token.

    Combine with an opening gate: `AfterResponsePrefix() & Until("</think>")` (= `Thinking()`).
    """

    def __init__(self, gate: Gate | str) -> None:
        if isinstance(gate, str):
            gate = AfterText(gate)
        if not isinstance(gate, Gate):
            raise TypeError(f"Until needs a Gate or a text, got {type(gate).__name__}")
        self.gate = gate
        self.needs_tokens = gate.needs_tokens

    def runner(self, tokenizer: Any) -> GateRunner:
        return _UntilRunner(self.gate.runner(tokenizer))

    def reference_open_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        return 0 if len(str_tokens) > 0 else None

    def reference_close_from(self, str_tokens: Sequence[str], prompt_length: int) -> int | None:
        opens = self.gate.reference_open_from(str_tokens, prompt_length)
        closes = self.gate.reference_close_from(str_tokens, prompt_length)
        return opens if opens is not None and (closes is None or opens < closes) else None

    def _key(self) -> tuple[Any, ...]:
        return ("Until", self.gate._key())

    def __repr__(self) -> str:
        return f"Until({self.gate!r})"


class Window(AllOf):
    """`as_gate(start) & Until(stop)`: steer real positions [where `start` opens, where `stop` opens)."""

    def __init__(self, start: Gate | str | int | None, stop: Gate | str) -> None:
        super().__init__(as_gate(start), Until(stop))


class Thinking(AllOf):
    """The thinking trace after the response prefix: `AfterResponsePrefix(...) & Until("</think>")` (CLI:
    `thinking`). Steers from the token after the prefix's end up to and including the `</think>` token."""

    def __init__(self, end: str = "sentence", max_tokens: int | None = 64, think_close: str = THINK_CLOSE) -> None:
        super().__init__(AfterResponsePrefix(end=end, max_tokens=max_tokens), Until(think_close))


def as_gate(gate: Gate | str | int | None) -> Gate:
    """A Gate from a Gate, None (AfterResponsePrefix), an int (FromPosition) or a CLI spelling.

    Spellings: "prefix", "prefix:newline", "prefix:sentence:32" (max tokens), "always", "generated",
    "pos:12", "text:<plain text>", "regex:<pattern>", "thinking" (from the response prefix's end to `</think>`,
    = `Thinking()`), "in-prefix" (inside the response prefix only: from the first generated token until the
    prefix's end, = `GeneratedOnly() & Until(AfterResponsePrefix())`), "until:<plain text>" (= `Until(text)`).
    "thinking" and "in-prefix" take the same ":sentence|newline:N" options as "prefix".
    """
    if gate is None:
        return AfterResponsePrefix()
    if isinstance(gate, Gate):
        return gate
    if isinstance(gate, int):
        return FromPosition(gate)
    kind, _, arg = str(gate).partition(":")
    kind = kind.strip().lower()
    if kind in ("prefix", "response-prefix", "after-response-prefix", "thinking", "in-prefix"):
        parts = [p for p in arg.split(":") if p]
        end = parts[0] if parts and not parts[0].isdigit() else "sentence"
        digits = [p for p in parts if p.isdigit()]
        max_tokens = int(digits[0]) if digits else 64
        if kind == "thinking":
            return Thinking(end=end, max_tokens=max_tokens)
        if kind == "in-prefix":
            return GeneratedOnly() & Until(AfterResponsePrefix(end=end, max_tokens=max_tokens))
        return AfterResponsePrefix(end=end, max_tokens=max_tokens)
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
    if kind == "until" and arg:
        return Until(arg)
    raise ValueError(
        f"unknown gate {gate!r}: use prefix[:sentence|newline][:N], always, generated, pos:N, text:..., regex:..., "
        "thinking[:...], in-prefix[:...], until:..."
    )
