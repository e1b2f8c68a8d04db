"""The text each token adds to a decoded sequence: what the text gates and the response prefix's end read.

A byte-level tokenizer (all R1 families) can split one character over several tokens that decode alone to
'\ufffd'. Reading `model.to_str_tokens` would then see replacement characters where the text has, e.g., an
ideographic space; these helpers give each token the text that is complete once it has arrived instead, online
(`TextCompleter`, one token at a time) and one-shot (`text_pieces`), with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TokenStrings:
    """Per-token strings, as `model.to_str_tokens` gives them, memoised by id (the decode is the slow part)."""

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer is None:
            raise ValueError("reading the text of tokens needs the model's tokenizer (model.tokenizer is None); set one")
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


class TextCompleter:
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
    what the text gates and the response prefix read, one-shot. Their concatenation is `tokenizer.decode(ids)` for valid UTF-8."""
    strings = TokenStrings(tokenizer)
    completer = TextCompleter(tokenizer)
    ids = [int(i) for i in ids]
    return [completer.push(i, piece) for i, piece in zip(ids, strings(ids))]
