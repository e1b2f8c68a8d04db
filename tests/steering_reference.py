"""A slow, obviously-correct oracle for gated steering: greedy decoding with no KV cache, re-running the whole
sequence each step and adding the intervention by hand at the positions each gate's one-shot definition opens.

The tests check that `steer` + `model.generate` / `generate_stream` (cached and uncached) produce exactly its
tokens, and that the `GateRecord` of each equals the one-shot `(open_at, close_at)` per row. Test-only: it
lives with the tests (imported by name, like the other test helpers), not in the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from r1_plugin.steering.gates import Gate
from r1_plugin.token_text import text_pieces

AddFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (activation, gate mask [batch, pos]) -> activation


def left_pads(model: Any, tokens: torch.Tensor, prepend_bos: bool = False) -> torch.Tensor:
    """`[batch]` left padding per row, as `generate` computes it (leading pad ids, BOS kept when BOS == pad)."""
    from transformer_lens.utilities.tokenize_utils import get_attention_mask

    mask = get_attention_mask(model.tokenizer, tokens, prepend_bos, padding_side="left")
    return (mask.cumsum(-1) == 0).sum(-1)


Span = tuple[int | None, int | None]  # (open_at, close_at) of one row, as a GateRecord reports it


def reference_span(gate: Gate, str_tokens: list[str], prompt_length: int) -> Span:
    """One-shot (open_at, close_at) of one finished row, with `GateRecord`'s rule: open_at is the first steered
    position (None if none), close_at the first position after it that is not steered (None if none)."""
    opens = gate.reference_open_from(str_tokens, prompt_length)
    closes = gate.reference_close_from(str_tokens, prompt_length)
    if opens is None or (closes is not None and closes <= opens):
        return None, None
    return opens, closes


def reference_spans(model: Any, tokens: torch.Tensor, pads: torch.Tensor, prompt_length: int, gate: Gate) -> list[Span]:
    """One-shot (open_at, close_at) per row (real positions) for a padded `[batch, seq]` sequence."""
    out: list[Span] = []
    for row in range(tokens.shape[0]):
        real = tokens[row, int(pads[row]) :]
        str_tokens = text_pieces(model.tokenizer, real.tolist())
        out.append(reference_span(gate, str_tokens, prompt_length - int(pads[row])))
    return out


def reference_thresholds(model: Any, tokens: torch.Tensor, pads: torch.Tensor, prompt_length: int, gate: Gate) -> list[int | None]:
    """One-shot `open_at` per row (real positions) for a padded `[batch, seq]` sequence."""
    return [span[0] for span in reference_spans(model, tokens, pads, prompt_length, gate)]


def gate_mask(tokens_len: int, pads: torch.Tensor, spans: list[Span]) -> torch.Tensor:
    """`[batch, seq]` bool: open_at <= real position < close_at (never for None, never on padding)."""
    real = torch.arange(tokens_len).unsqueeze(0) - pads.unsqueeze(1)
    never = tokens_len + 1
    start = torch.tensor([never if o is None else o for o, _ in spans]).unsqueeze(1)
    stop = torch.tensor([never if c is None else c for _, c in spans]).unsqueeze(1)
    return (real >= start) & (real < stop) & (real >= 0)


def reference_generate_spans(
    model: Any,
    tokens: torch.Tensor,
    max_new_tokens: int,
    hook_name: str,
    gate: Gate,
    add: AddFn,
) -> tuple[torch.Tensor, list[Span]]:
    """Greedy tokens `[batch, seq + max_new_tokens]` and the final per-row (open_at, close_at), the naive way:
    no KV cache, the whole sequence re-run each step, the gate's one-shot definition applied to it."""
    pads = left_pads(model, tokens)
    prompt_length = tokens.shape[1]
    seq = tokens.clone()
    for _ in range(max_new_tokens):
        spans = reference_spans(model, seq, pads, prompt_length, gate)
        mask = gate_mask(seq.shape[1], pads, spans)
        attention = (torch.arange(seq.shape[1]).unsqueeze(0) >= pads.unsqueeze(1)).long()

        def hook(act: torch.Tensor, hook: Any, mask: torch.Tensor = mask) -> torch.Tensor:
            return add(act, mask.to(act.device))

        with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, hook)]):
            logits = model(seq, attention_mask=attention.to(seq.device))
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq, reference_spans(model, seq, pads, prompt_length, gate)


def reference_generate(
    model: Any,
    tokens: torch.Tensor,
    max_new_tokens: int,
    hook_name: str,
    gate: Gate,
    add: AddFn,
) -> tuple[torch.Tensor, list[int | None]]:
    """Greedy tokens `[batch, seq + max_new_tokens]` and the final per-row `open_at`, the naive way."""
    seq, spans = reference_generate_spans(model, tokens, max_new_tokens, hook_name, gate, add)
    return seq, [span[0] for span in spans]
