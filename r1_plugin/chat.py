"""R1's chat format: render a user prompt exactly as the tokenizer's chat template does, ending in `<think>\\n`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from r1_plugin.response_prefix import THINK_CLOSE
from r1_plugin.response_prefix import THINK_TOKEN as THINK_OPEN

USER_TAG = "<｜User｜>"
ASSISTANT_TAG = "<｜Assistant｜>"
BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    return tokenizer if tokenizer is not None else model_or_tokenizer


def _messages(user: str, system: str | None, history: Sequence[dict[str, str]] | None) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.extend(history or [])
    messages.append({"role": "user", "content": user})
    return messages


def render_r1_template(messages: Sequence[dict[str, str]], bos_token: str = BOS_TEXT) -> str:
    """Render R1's chat template by hand (system after BOS, prior answers stripped up to `</think>`, `<think>\\n`)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = [bos_token, system]
    for message in messages:
        if message["role"] == "user":
            out.append(USER_TAG + message["content"])
        elif message["role"] == "assistant":
            content = message["content"]
            if THINK_CLOSE in content:
                content = content.split(THINK_CLOSE)[-1]
            out.append(ASSISTANT_TAG + content + EOS_TEXT)
        elif message["role"] != "system":
            raise ValueError(f"role {message['role']!r} is not supported by the manual R1 renderer")
    out.append(ASSISTANT_TAG + THINK_OPEN + "\n")
    return "".join(out)


def format_r1_prompt(
    model_or_tokenizer: Any,
    user: str,
    system: str | None = None,
    history: Sequence[dict[str, str]] | None = None,
) -> str:
    """The prompt text for `user` as R1's tokenizer renders it with the generation prompt (ends with `<think>\\n`).

    Uses the tokenizer's own chat template when it has one (R1/V3, Qwen and Llama distill families differ in
    details), else R1's template by hand. The text already starts with BOS: encode it with
    `r1_chat_tokens` (or `add_special_tokens=False`), never with the tokenizer's default BOS, or BOS doubles.
    DeepSeek recommends no system prompt for R1.
    """
    tokenizer = _tokenizer_of(model_or_tokenizer)
    messages = _messages(user, system, history)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        bos = getattr(tokenizer, "bos_token", None) or BOS_TEXT
        text = render_r1_template(messages, bos)
    if not text.endswith(THINK_OPEN + "\n"):  # pre-Feb-2025 templates let the model write <think> itself
        text += THINK_OPEN + "\n"
    return text


class ChatBatch(NamedTuple):
    """Left-padded R1 prompts: pass `tokens` to `model.generate(tokens, padding_side="left", ...)` (which masks the
    same leading pads) or both to `model(tokens, attention_mask=attention_mask)`."""

    tokens: torch.Tensor  # [batch, seq] ids, each row left-padded with the tokenizer's pad id
    attention_mask: torch.Tensor  # [batch, seq] 0 on each row's left padding, 1 on its tokens


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def r1_chat_tokens(
    model_or_tokenizer: Any,
    user: str,
    system: str | None = None,
    history: Sequence[dict[str, str]] | None = None,
) -> torch.Tensor:
    """Token ids `[1, seq]` of one rendered R1 prompt, with exactly one BOS (the template's own), e.g.
    `model.generate(r1_chat_tokens(model, "What is 2+2?"), max_new_tokens=256, use_past_kv_cache=True)`.

    Several prompts: `r1_chat_batch`. (A list here still works for one release, with a DeprecationWarning, and
    returns `r1_chat_batch`'s `ChatBatch`.)
    """
    if not isinstance(user, str):
        warnings.warn(
            "r1_chat_tokens(model, [prompts]) is deprecated: use r1_chat_batch(model, prompts), which returns the "
            "same ChatBatch(tokens, attention_mask); r1_chat_tokens takes one prompt and returns a tensor",
            DeprecationWarning,
            stacklevel=2,
        )
        return r1_chat_batch(model_or_tokenizer, user, system, history)  # type: ignore[return-value]
    tokenizer = _tokenizer_of(model_or_tokenizer)
    ids = torch.tensor([_encode(tokenizer, format_r1_prompt(tokenizer, user, system, history))], dtype=torch.long)
    device = _device_of(model_or_tokenizer)
    return ids.to(device) if device is not None else ids


def r1_chat_batch(
    model_or_tokenizer: Any,
    users: Sequence[str],
    system: str | None = None,
    history: Sequence[dict[str, str]] | None = None,
) -> ChatBatch:
    """Several rendered R1 prompts as a `ChatBatch(tokens, attention_mask)`, left-padded with the tokenizer's pad id.

    Ready for `model.generate(batch.tokens, padding_side="left", ...)`; `system` and `history` apply to every row.
    Gates count real positions (padding excluded), so each row opens at its own response prefix's end.
    """
    tokenizer = _tokenizer_of(model_or_tokenizer)
    users = [users] if isinstance(users, str) else list(users)
    if not users or not all(isinstance(u, str) for u in users):
        raise TypeError("r1_chat_batch takes a non-empty list of prompts (str); one prompt: r1_chat_tokens")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError(
            "batching prompts needs a pad token: set tokenizer.pad_token (e.g. to tokenizer.eos_token) first"
        )
    rows = [_encode(tokenizer, format_r1_prompt(tokenizer, u, system, history)) for u in users]
    width = max(len(r) for r in rows)
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    device = _device_of(model_or_tokenizer)
    if device is not None:
        tokens, mask = tokens.to(device), mask.to(device)
    return ChatBatch(tokens, mask)


def _device_of(model_or_tokenizer: Any) -> Any:
    """The model's device (`cfg.device`, HookedTransformer and TransformerBridge alike), None for a tokenizer."""
    return getattr(getattr(model_or_tokenizer, "cfg", None), "device", None)
