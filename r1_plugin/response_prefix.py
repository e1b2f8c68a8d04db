"""R1's response prefix: the first sentence of the thinking trace after `<think>` ("Okay, so the user asked ...").

Goodfire found that steering R1 works only once this prefix is written, and that attention sinks sit at its end.
This module is the one definition of where the prefix ends. `response_prefix_end(tokenizer, ids)` is the function
the sink check, the experiments and the CLI call; the steering gate `AfterResponsePrefix` runs the same
`ResponsePrefixScanner` online, one token at a time, on the same per-token text (`r1_plugin.token_text`): the text
each token completes, so a character split over several byte-level tokens (an ideographic space after the
period, say) counts once it is whole, exactly as in the decoded text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK_TOKEN = "<think>"
THINK_CLOSE = "</think>"  # ends the thinking trace (the `Thinking` gate closes after it)
# A sentence ends at '.', '!' or '?' (optionally closed by quotes/brackets) followed by whitespace, or at a
# newline. "3.5" or "e.g" do not end a sentence: the punctuation must be followed by whitespace.
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")
NEWLINE = re.compile(r"\n")
# A finished text may end right after the punctuation (no whitespace follows): counted only when `complete`.
_FINAL_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s*$")


@dataclass(frozen=True)
class ResponsePrefixSpec:
    """Where R1's response prefix ends.

    end: "sentence" (first sentence end), or "newline" (first newline after the prefix text starts).
    max_tokens: the prefix ends after at most this many tokens after `<think>` even with no sentence end (None:
        no limit).
    think_token: the text of the token that opens the thinking trace.
    """

    end: str = "sentence"
    max_tokens: int | None = 64
    think_token: str = THINK_TOKEN

    def __post_init__(self) -> None:
        if self.end not in ("sentence", "newline"):
            raise ValueError(f"end must be 'sentence' or 'newline', got {self.end!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")

    @property
    def pattern(self) -> re.Pattern[str]:
        """The regex whose first match in the prefix text ends the prefix."""
        return SENTENCE_END if self.end == "sentence" else NEWLINE


class ResponsePrefixScanner:
    """The prefix's end, decided online: `end_at` is fed one token's text at a time (in order) and returns the
    end's position at the first token that decides it. `find_response_prefix_end` runs the same scanner."""

    def __init__(self, spec: ResponsePrefixSpec | None = None) -> None:
        self.spec = spec or ResponsePrefixSpec()
        self.start: int | None = None  # position of the latest `<think>`
        self.text = ""
        self.owner: list[int] = []  # owner[c] = position of the token holding character c of `text`
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
                return None  # the newline(s) after <think> are not part of the prefix
            self.begun = True
            piece = stripped
        self.text += piece
        self.owner.extend([pos] * len(piece))
        match = self.spec.pattern.search(self.text)
        if match is not None:
            return self.owner[match.start()]
        if self.spec.max_tokens is not None and pos - self.start >= self.spec.max_tokens:
            return pos
        return None

    def final_end(self) -> int | None:
        """The end when the sequence is finished and undecided: a trailing '.'/'!'/'?' counts (sentence mode)."""
        if not self.text or self.spec.end != "sentence":
            return None
        tail = _FINAL_SENTENCE_END.search(self.text)
        return None if tail is None else self.owner[tail.start()]


def find_think_start(str_tokens: Sequence[str], think_token: str = THINK_TOKEN) -> int | None:
    """Index of the last `<think>` token, or None."""
    for i in range(len(str_tokens) - 1, -1, -1):
        if str_tokens[i] == think_token:
            return i
    return None


def find_response_prefix_end(
    str_tokens: Sequence[str], spec: ResponsePrefixSpec | None = None, complete: bool = False
) -> int | None:
    """Position of the token that ends the response prefix, from per-token text, or None.

    `str_tokens` must be each token's completed text (`r1_plugin.token_text.text_pieces`); for token ids call
    `response_prefix_end`, which does that. The prefix is the text after the last `<think>` token, skipping the
    newline(s) that follow it; its end is the token that completes the first sentence end (or newline). Because a
    sentence end needs the following whitespace, the deciding whitespace can arrive with a later token: the end is
    still the token holding the punctuation. When the end is not yet decidable (the text so far ends right after
    a '.') it returns None unless `complete` (the sequence is final), in which case a trailing '.'/'!'/'?' counts.
    """
    spec = spec or ResponsePrefixSpec()
    start = find_think_start(str_tokens, spec.think_token)
    if start is None:
        return None
    scanner = ResponsePrefixScanner(spec)
    for pos in range(start, len(str_tokens)):
        end = scanner.end_at(str_tokens[pos], pos)
        if end is not None:
            return end
    return scanner.final_end() if complete else None


def response_prefix_end(
    model_or_tokenizer: Any,
    ids: Sequence[int] | Any,
    spec: ResponsePrefixSpec | None = None,
    complete: bool = False,
) -> int | None:
    """THE end of R1's response prefix in one row of token ids (no padding): the index of the token that ends
    it, or None. Used by the sink check, the experiments and the CLI; the `AfterResponsePrefix` gate decides the
    same position online (and opens right after it, or where it is first decidable if later).

    `complete`: the sequence is finished, so a trailing '.'/'!'/'?' ends the prefix too.
    """
    from r1_plugin.token_text import text_pieces

    tokenizer = model_or_tokenizer.tokenizer if hasattr(model_or_tokenizer, "tokenizer") else model_or_tokenizer
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise ValueError(f"response_prefix_end takes one row of ids, got {len(ids)} rows: call it per row")
        ids = ids[0]
    return find_response_prefix_end(text_pieces(tokenizer, ids), spec, complete=complete)
