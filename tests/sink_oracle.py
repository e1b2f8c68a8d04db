"""The brute-force oracle for sink detection (test-only; imports no TransformerLens or SAELens, so it runs on TL 4)."""

from __future__ import annotations

import torch


def alpha_from_patterns(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """alpha [batch, layer, head, key] = mean attention each real key gets from the real queries at or after it
    (Gu et al.), by an explicit loop over keys: `pattern` is [batch, layer, head, query, key], `mask` [batch, seq]."""
    pattern = pattern.double()
    batch, n_layers, n_heads, seq, _ = pattern.shape
    alpha = torch.full((batch, n_layers, n_heads, seq), float("nan"), dtype=torch.float64)
    for b in range(batch):
        for k in range(seq):
            queries = [i for i in range(k, seq) if mask[b, i]]
            if mask[b, k] and queries:
                alpha[b, :, :, k] = pattern[b, :, :, queries, k].mean(dim=-1)
    return alpha
