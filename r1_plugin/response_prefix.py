"""R1's response prefix: the first sentence of the thinking trace after `<think>` ("Okay, so the user asked ...").

Goodfire found that steering R1 works only once this prefix is written, and that attention sinks sit at its end.
The steering gate `AfterResponsePrefix` and the sink check both use this one definition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

THINK_TOKEN = "<think>"
THINK_CLOSE = "</think>"  # ends the thinking trace (the `Thinking` gate closes after it)
# A sentence ends at '.', '!' or '?' (optionally closed by quotes/brackets) followed by whitespace, or at a
# newline. "3.5" or "e.g" do not end a sentence: the punctuation must be followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")
_NEWLINE = re.compile(r"\n")


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


def find_think_start(str_tokens: Sequence[str], think_token: str = THINK_TOKEN) -> int | None:
    """Index of the last `<think>` token, or None."""
    for i in range(len(str_tokens) - 1, -1, -1):
        if str_tokens[i] == think_token:
            return i
    return None


def find_response_prefix_end(
    str_tokens: Sequence[str], spec: ResponsePrefixSpec | None = None, complete: bool = False
) -> int | None:
    """Position of the token that ends the response prefix in a sequence of per-token strings, or None.

    The prefix is the text after the last `<think>` token, skipping the newline(s) that follow it; its end is the
    token that completes the first sentence end (or newline). Because a sentence end needs the following
    whitespace, the deciding whitespace can arrive with the next token: the end is still the token holding the
    punctuation. When the end is not yet decidable (the text so far ends right after a '.') it returns None
    unless `complete` (the sequence is final), in which case a trailing '.'/'!'/'?' counts.
    """
    spec = spec or ResponsePrefixSpec()
    start = find_think_start(str_tokens, spec.think_token)
    if start is None:
        return None
    pattern = _SENTENCE_END if spec.end == "sentence" else _NEWLINE
    text = ""
    owner: list[int] = []  # owner[c] = token index of character c
    begun = False
    for pos in range(start + 1, len(str_tokens)):
        piece = str_tokens[pos]
        if not begun:
            stripped = piece.lstrip("\n")
            if not stripped.strip():
                continue  # the newline(s) after <think> are not part of the prefix
            begun = True
            piece = stripped
        text += piece
        owner.extend([pos] * len(piece))
        match = pattern.search(text)
        if match is not None:
            return owner[match.start()]
        if spec.max_tokens is not None and pos - start >= spec.max_tokens:
            return pos
    if complete and text:
        tail = re.search(r"[.!?][\"')\]]*\s*$", text) if spec.end == "sentence" else None
        if tail is not None:
            return owner[tail.start()]
    return None
