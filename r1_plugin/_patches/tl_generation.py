"""HookedTransformer.forward / generate / generate_stream: pass-throughs that tell an attached observer where
each forward pass and each generation call begins and ends.

What and why: r1_plugin's position-gated steering must know, inside a TransformerLens hook, the absolute position
of the activations (the KV-cache length) and whether a forward continues the sequence of the previous one (a
decode step, or an uncached `generate`/`generate_stream` step that re-runs the whole sequence) or starts a new
one. Hooks see neither, and TransformerLens 3.9 has no callback for them, so these three methods are wrapped at
class level. Each wrapper is a pure pass-through (one dict lookup) unless an observer is attached to *that*
instance (`model.__dict__[OBSERVER_ATTR]`, set by `r1_plugin.steering.tracker.SequenceTracker` while a `steer`
block is active); it forwards `*args, **kwargs` unchanged and returns the original's result. Subclasses that
override `forward` and call `super().forward` (SAELens's HookedSAETransformer) go through it too.

The observer protocol: `begin_forward(args, kwargs)` / `end_forward()` around every forward call, and
`begin_generation()` / `end_generation()` around every `generate` call and every `generate_stream` generator
(from its first `next()` until it is exhausted or closed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

OBSERVER_ATTR = "_r1_generation_observer"


def _wrap_forward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        observer = self.__dict__.get(OBSERVER_ATTR)
        if observer is None:
            return original(self, *args, **kwargs)
        observer.begin_forward(args, kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            observer.end_forward()

    return forward


def _wrap_generate(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        observer = self.__dict__.get(OBSERVER_ATTR)
        if observer is None:
            return original(self, *args, **kwargs)
        observer.begin_generation()
        try:
            return original(self, *args, **kwargs)
        finally:
            observer.end_generation()

    return generate


def _wrap_generate_stream(original: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(original)
    def generate_stream(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        observer = self.__dict__.get(OBSERVER_ATTR)
        if observer is None:
            yield from original(self, *args, **kwargs)
            return
        observer.begin_generation()
        try:
            yield from original(self, *args, **kwargs)
        finally:
            observer.end_generation()

    return generate_stream


_WRAPPERS = {"forward": _wrap_forward, "generate": _wrap_generate, "generate_stream": _wrap_generate_stream}


def apply() -> None:
    """Wrap HookedTransformer.forward, .generate and .generate_stream (idempotent; all three or none)."""
    from transformer_lens import HookedTransformer

    from r1_plugin._patches._marks import is_patched, mark, replace, require

    for name, wrap in _WRAPPERS.items():
        original = require(HookedTransformer, name, "tl_generation")
        if is_patched(original):
            continue
        replace(HookedTransformer, name, mark(wrap(original), original))
