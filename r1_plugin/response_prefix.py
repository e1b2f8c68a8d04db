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
# Where a sentence ends, in every script R1 writes its thinking in (it thinks in the prompt's language).
# - Stops that also sit inside words and numbers ("3.5", "e.g", "wait...so") end a sentence only when whitespace
#   follows: ASCII . ! ?, the ellipses … and ⋯, full-width ．, and ‼ ⁇ ⁈ ⁉ ‽.
# - Stops that never sit inside a word end a sentence without whitespace (Chinese and Japanese write none):
#   full-width 。 ｡ ！ ？, vertical ︒, Devanagari danda । ॥, Arabic ؟ and Urdu ۔, Armenian ։,
#   Ethiopic ። ፧ ፨, Myanmar ။, Khmer ។. The end is the last stop of a run ("？！"), so it is decided by the
#   first character after the run that is neither a stop nor a closer.
# Closing quotes and brackets may follow a stop on both sides ('."', '。」', '।”'). A newline always ends a sentence.
# Both the one-shot `response_prefix_end` and the online gate `AfterResponsePrefix` match this one pattern.
SPACED_STOPS = ".!?\u2026\u22ef\uff0e\u203c\u2047\u2048\u2049\u203d"
UNSPACED_STOPS = "\u3002\uff61\uff01\uff1f\ufe12\u0964\u0965\u061f\u06d4\u0589\u1362\u1367\u1368\u104b\u17d4"
CLOSERS = "\"')]}\u201d\u2019\u00bb\u203a\u300d\u300f\uff09\u3011\u3015\u3009\u300b\u3017\u3019\u301b\uff02\uff07\uff3d\uff5d"
_SPACED = f"[{re.escape(SPACED_STOPS)}]"
_UNSPACED = f"[{re.escape(UNSPACED_STOPS)}]"
_CLOSE = f"[{re.escape(CLOSERS)}]*"
_NOT_STOP_OR_CLOSER = f"[^{re.escape(SPACED_STOPS + UNSPACED_STOPS + CLOSERS)}]"
SENTENCE_END = re.compile(f"{_SPACED}{_CLOSE}(?=\\s)|{_UNSPACED}(?={_CLOSE}{_NOT_STOP_OR_CLOSER})|\n")
NEWLINE = re.compile(r"\n")
# A finished text may end right after the stop (nothing follows): counted only when `complete`.
_FINAL_SENTENCE_END = re.compile(f"(?:{_SPACED}|{_UNSPACED}){_CLOSE}\\s*$")


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
        """The end when the sequence is finished and undecided: a trailing stop of any script counts (sentence mode)."""
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
    a stop) it returns None unless `complete` (the sequence is final), in which case a trailing stop counts.
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

    `complete`: the sequence is finished, so a trailing stop (`SENTENCE_END`'s, of any script) ends the prefix too.
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
