"""A slow, obviously-correct oracle for gated steering: greedy decoding with no KV cache, re-running the whole
sequence each step and adding the intervention by hand at the positions each gate's one-shot definition opens.

The tests check that `steer` + `model.generate` (cached and uncached) produce exactly its tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from r1_plugin.steering.gates import Gate, text_pieces

AddFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (activation, gate mask [batch, pos]) -> activation


def left_pads(model: Any, tokens: torch.Tensor, prepend_bos: bool = False) -> torch.Tensor:
    """`[batch]` left padding per row, as `generate` computes it (leading pad ids, BOS kept when BOS == pad)."""
    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    mask = get_attention_mask(model.tokenizer, tokens, prepend_bos, padding_side="left")
    return (mask.cumsum(-1) == 0).sum(-1)


def reference_thresholds(model: Any, tokens: torch.Tensor, pads: torch.Tensor, prompt_length: int, gate: Gate) -> list[int | None]:
    """One-shot `open_from` per row (real positions) for a padded `[batch, seq]` sequence."""
    out: list[int | None] = []
    for row in range(tokens.shape[0]):
        real = tokens[row, int(pads[row]) :]
        str_tokens = text_pieces(model.tokenizer, real.tolist())
        out.append(gate.reference_open_from(str_tokens, prompt_length - int(pads[row])))
    return out


def gate_mask(tokens_len: int, pads: torch.Tensor, thresholds: list[int | None]) -> torch.Tensor:
    """`[batch, seq]` bool: real position >= threshold (never for None, never on padding)."""
    real = torch.arange(tokens_len).unsqueeze(0) - pads.unsqueeze(1)
    thr = torch.tensor([tokens_len + 1 if t is None else t for t in thresholds]).unsqueeze(1)
    return (real >= thr) & (real >= 0)


def reference_generate(
    model: Any,
    tokens: torch.Tensor,
    max_new_tokens: int,
    hook_name: str,
    gate: Gate,
    add: AddFn,
) -> tuple[torch.Tensor, list[int | None]]:
    """Greedy tokens `[batch, seq + max_new_tokens]` and the final per-row thresholds, the naive way."""
    pads = left_pads(model, tokens)
    prompt_length = tokens.shape[1]
    seq = tokens.clone()
    thresholds: list[int | None] = []
    for _ in range(max_new_tokens):
        thresholds = reference_thresholds(model, seq, pads, prompt_length, gate)
        mask = gate_mask(seq.shape[1], pads, thresholds)
        attention = (torch.arange(seq.shape[1]).unsqueeze(0) >= pads.unsqueeze(1)).long()

        def hook(act: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
            return add(act, mask.to(act.device))

        with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, hook)]):
            logits = model(seq, attention_mask=attention.to(seq.device))
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq, reference_thresholds(model, seq, pads, prompt_length, gate)
