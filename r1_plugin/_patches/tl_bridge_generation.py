"""TransformerBridge generation: generation boundaries for an attached observer, and the KV cache under
transformers 5.2x.

What and why, two patches:

1. `TransformerBridge.generate` / `generate_stream`: class-level pass-throughs that tell an observer attached to
   *that* instance (`model.__dict__[OBSERVER_ATTR]`, the same attribute and protocol as `tl_generation`) where a
   generation call begins and ends (`begin_generation()` / `end_generation()`). r1_plugin's position tracker reads
   every forward's absolute positions from a torch pre-hook on the bridge's HF model (no patch needed for that),
   but only a generation call knows that its uncached steps, each re-running the whole sequence, are one sequence.
   Without an observer each wrapper is one dict lookup and forwards `*args, **kwargs` unchanged.
2. The bridge's attention components read the KV cache from the keyword `past_key_values`, but transformers
   5.2x decoder layers pass it to their attention module as `cache` (`deprecate_kwarg("past_key_values", ...,
   new_name="cache")`). The bridge then never fills the cache, so every cached decode step attends to itself
   alone and `bridge.generate(use_past_kv_cache=True)` differs from transformers' own greedy output (measured on
   tiny Qwen2, Llama and DeepSeek-V3 models with TransformerLens 3.9.0 / transformers 5.23). The wrappers of
   `AttentionBridge._update_kv_cache` (generic and rotary attention) and `MLAAttentionBridge.forward` (DeepSeek
   MLA) hand a `cache` keyword on as `past_key_values` when the latter is absent, and change nothing else.

Where TransformerLens has no `transformer_lens.model_bridge` (older than 3.x bridges), there is nothing to patch and
`apply()` returns; a bridge that lacks one of the patched methods raises PatchTargetError.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

# The same pass-throughs as HookedTransformer.generate / generate_stream get (one definition, in tl_generation).
from r1_plugin._patches.tl_generation import OBSERVER_ATTR, _wrap_generate, _wrap_generate_stream

__all__ = ["OBSERVER_ATTR", "apply"]

PATCH = "tl_bridge_generation"


def _cache_keyword(kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs with transformers' `cache=` handed on as `past_key_values=` (when that is not given)."""
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs.pop("cache")
    return kwargs


def _wrap_update_kv_cache(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _update_kv_cache(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **_cache_keyword(kwargs))

    return _update_kv_cache


def _wrap_mla_forward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **_cache_keyword(kwargs))

    return forward


def _targets() -> list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] | None:
    """(class, method, wrapper) for every patched method; None when TransformerLens has no bridge."""
    try:
        bridge = importlib.import_module("transformer_lens.model_bridge.bridge")
        attention = importlib.import_module("transformer_lens.model_bridge.generalized_components.attention")
    except ModuleNotFoundError:
        return None
    out: list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (bridge.TransformerBridge, "generate", _wrap_generate),
        (bridge.TransformerBridge, "generate_stream", _wrap_generate_stream),
        (attention.AttentionBridge, "_update_kv_cache", _wrap_update_kv_cache),
    ]
    try:
        mla = importlib.import_module("transformer_lens.model_bridge.generalized_components.mla_attention")
    except ModuleNotFoundError:
        return out  # a TransformerLens without an MLA bridge: nothing of it to fix
    out.append((mla.MLAAttentionBridge, "forward", _wrap_mla_forward))
    return out


def apply() -> None:
    """Wrap the bridge's generate / generate_stream and its attention's cache keyword (idempotent)."""
    from r1_plugin._patches._marks import is_patched, mark, replace, require

    targets = _targets()
    if targets is None:
        return
    for owner, name, _ in targets:
        require(owner, name, PATCH)  # all or nothing: check every target before patching any
    for owner, name, wrap in targets:
        original = owner.__dict__[name]
        if not is_patched(original):
            replace(owner, name, mark(wrap(original), original))  # restored if a later patch of this module fails
