"""The records a feature database returns, shared by the database (`db`), its queries and its renderers (`render`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureLabel:
    """One feature's auto-interpretation label, with Goodfire's quality and interestingness scores (0..1)."""

    feature_id: int
    label: str
    quality: float | None = None
    interestingness: float | None = None
    model_name: str | None = None
    prompt_version: str | None = None


@dataclass(frozen=True)
class Example:
    """One max-activating example: where the feature fired, how strongly, and the tokens around it."""

    feature_id: int
    sequence_id: int
    token_idx: int
    strength: float
    tokens: tuple[str, ...]  # decoded tokens of the window, in order
    token_ids: tuple[int | None, ...]  # the tokenizer ids (the `token` column), None where absent
    token_indices: tuple[int, ...]  # token_idx of each window token
    position: int  # index into `tokens` of the activating token; -1 if the tokens table lacks it

    @property
    def token(self) -> str:
        """The decoded activating token ('' if the tokens table does not have it)."""
        return self.tokens[self.position] if self.position >= 0 else ""

    @property
    def text(self) -> str:
        """The window as plain text."""
        return "".join(self.tokens)

    @property
    def before(self) -> str:
        """The text of the window before the activating token."""
        return "".join(self.tokens[: max(self.position, 0)])

    @property
    def after(self) -> str:
        """The text of the window after the activating token."""
        return "".join(self.tokens[self.position + 1 :]) if self.position >= 0 else ""
