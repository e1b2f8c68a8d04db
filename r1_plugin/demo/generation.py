"""The demo's generations: unsteered and steered, where they diverge, how often they backtrack, feature activations."""

from __future__ import annotations

from typing import Any

import torch

from r1_plugin.demo.config import BACKTRACK_PATTERN


def _completion(model: Any, tokens: torch.Tensor, prompt_len: int) -> str:
    """Decoded text of the generated part of `tokens` [1, seq], special tokens kept."""
    return model.tokenizer.decode(tokens[0, prompt_len:].tolist(), skip_special_tokens=False)


def generate(model: Any, prompt_tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy KV-cached generation that stops at EOS; returns prompt + completion ids [1, seq]."""
    from r1_plugin.drive import driver

    return driver(model).generate_greedy(prompt_tokens, max_new_tokens)


def first_divergence(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """First position where two [1, seq] token sequences differ (a length difference counts), else None."""
    from r1_plugin.experiments.base import first_difference

    return first_difference(a[0].tolist(), b[0].tolist())


def count_backtracks(text: str) -> int:
    """Backtracking sentences ("Wait, ...") in the thinking part of a completion."""
    return len(BACKTRACK_PATTERN.findall(text.split("</think>")[0]))


def steered_generation(
    model: Any, sae: Any, feature: int, strength: float, prompt_tokens: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, int | None]:
    """Generate while adding `strength` x the feature's decoder row after the response prefix; (tokens, gate pos)."""
    from r1_plugin.steering import AfterResponsePrefix, steer

    with steer(model, sae=sae, feature=feature, strength=strength, gate=AfterResponsePrefix(),
               warn_never_opened=False) as result:
        out = generate(model, prompt_tokens, max_new_tokens)
    open_at = result.open_at[0] if result.records else None
    return out, open_at


def feature_activations(model: Any, sae: Any, tokens: torch.Tensor, feature: int) -> torch.Tensor:
    """The feature's SAE activation at every position of `tokens` [1, seq] (no steering): [seq]."""
    from r1_plugin.drive import driver
    from r1_plugin.steering import encode_features, sae_hook_name

    hook = sae_hook_name(sae)
    with torch.no_grad():
        _, cache = driver(model).run_with_cache(tokens, [hook])
    return encode_features(sae, cache[hook], feature)[0, :, 0].float().cpu()
