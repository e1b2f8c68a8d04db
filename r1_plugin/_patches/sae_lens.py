"""Patches into SAELens 6.54 so `SAE.from_pretrained` knows r1_plugin's SAE releases (Goodfire's R1 SAEs).

SAELens has no plugin API for releases (no entry points, no register function), so a third party must patch:
1. `loading.pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS` / `NAMED_PRETRAINED_SAE_CONFIG_GETTERS` (plain
   dicts): add our `goodfire_r1` loader and config getter in place. A name SAELens already has is never replaced.
2. `registry.SAE_CLASS_REGISTRY` via SAELens's own `register_sae_class`: add the `goodfire_batch_topk` class
   (skipped when already registered: `register_sae_class` raises on a second call).
3. `loading.pretrained_saes_directory.get_pretrained_saes_directory` (a `functools.cache`d function that parses
   SAELens's own yaml): replaced by a wrapper that calls the cached original and adds r1_plugin's releases (from
   r1_plugin's pretrained_saes.yaml) to the dict it returns, unless SAELens already has a release of that name.
   Because the wrapper runs on every call, the releases come back after `get_pretrained_saes_directory
   .cache_clear()` rebuilds the dict (the wrapper forwards `cache_clear`/`cache_info` to the original). Modules
   that imported the function by name (`saes.sae`, `loading.pretrained_sae_loaders`, `evals`) are rebound too.
   The original's cached dict is also updated at once, so a caller holding the original function sees the
   releases until it clears the cache itself.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import sae_lens  # noqa: F401  (registers SAELens's own SAE classes before we add ours)
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading import pretrained_saes_directory as directory_module
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

from r1_plugin._patches._marks import is_patched, keep, mark, replace, require
from r1_plugin.saes import batch_topk, goodfire
from r1_plugin.saes.releases import plugin_lookups

logger = logging.getLogger(__name__)

PATCH = "sae_lens"

_shadowed_warned: set[str] = set()


def add_plugin_releases(directory: dict[str, Any]) -> dict[str, Any]:
    """Add r1_plugin's releases to a SAELens directory dict in place; a release SAELens already has is kept."""
    for release, lookup in plugin_lookups().items():
        existing = directory.get(release)
        if existing is None:
            directory[release] = lookup
        elif existing is not lookup and existing != lookup and release not in _shadowed_warned:
            _shadowed_warned.add(release)
            logger.warning("SAELens already ships release %r; r1_plugin keeps SAELens's entry", release)
    return directory


def _register_loaders() -> None:
    for table, ours in (
        (require(loaders, "NAMED_PRETRAINED_SAE_LOADERS", PATCH), goodfire.LOADERS),
        (require(loaders, "NAMED_PRETRAINED_SAE_CONFIG_GETTERS", PATCH), goodfire.CONFIG_GETTERS),
    ):
        keep(table)
        for name, func in ours.items():
            current = table.get(name)
            if current is None:
                table[name] = func  # type: ignore[assignment]
            elif current is not func:
                logger.warning("SAELens already has a loader named %r; r1_plugin keeps SAELens's", name)


def _register_sae_classes() -> None:
    if batch_topk.ARCHITECTURE not in SAE_CLASS_REGISTRY:
        keep(SAE_CLASS_REGISTRY)
        register_sae_class(batch_topk.ARCHITECTURE, batch_topk.GoodfireBatchTopKSAE,
                           batch_topk.GoodfireBatchTopKSAEConfig)


def _wrap_directory() -> None:
    current = require(directory_module, "get_pretrained_saes_directory", PATCH)
    if is_patched(current):
        wrapper, original = current, current.__wrapped_original__
    else:
        original = current

        @functools.wraps(original)
        def get_pretrained_saes_directory(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return add_plugin_releases(original(*args, **kwargs))

        wrapper = get_pretrained_saes_directory
        wrapper.cache_clear = original.cache_clear  # type: ignore[attr-defined]
        wrapper.cache_info = original.cache_info  # type: ignore[attr-defined]
        mark(wrapper, original)
        replace(directory_module, "get_pretrained_saes_directory", wrapper)
    for name, module in list(sys.modules.items()):
        if (name == "sae_lens" or name.startswith("sae_lens.")) and module is not None:
            if getattr(module, "get_pretrained_saes_directory", None) is original:
                replace(module, "get_pretrained_saes_directory", wrapper)
    keep(original())  # the cached dict the wrapper is about to fill: restored if this patch fails afterwards
    wrapper()  # fill the currently cached dict now


def apply() -> None:
    """Register r1_plugin's SAE loader, SAE class and releases with SAELens (idempotent)."""
    _register_loaders()
    _register_sae_classes()
    _wrap_directory()
