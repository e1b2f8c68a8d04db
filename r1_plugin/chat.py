"""R1's chat format: render a user prompt exactly as the tokenizer's chat template does, ending in `<think>\\n`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
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


def r1_chat_tokens(
    model_or_tokenizer: Any,
    user: str,
    system: str | None = None,
    history: Sequence[dict[str, str]] | None = None,
) -> torch.Tensor:
    """Token ids `[1, seq]` of the rendered R1 prompt, with exactly one BOS (the template's own).

    Pass them to `model.generate(tokens, ...)`, e.g.
    `model.generate(r1_chat_tokens(model, "What is 2+2?"), max_new_tokens=256, use_past_kv_cache=True)`.
    """
    tokenizer = _tokenizer_of(model_or_tokenizer)
    text = format_r1_prompt(tokenizer, user, system, history)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    device = getattr(getattr(model_or_tokenizer, "cfg", None), "device", None)
    return ids.to(device) if device is not None else ids
