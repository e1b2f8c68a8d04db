"""Patches into TransformerLens 3.9's model registry and config loading so R1's models load by their HF names.

TransformerLens has no plugin API for HookedTransformer (TL issue #888), so a third party must patch:
1. `supported_models.OFFICIAL_MODEL_NAMES` / `MODEL_ALIASES`: mutated in place (loading_from_pretrained imported
   the same objects by name; rebinding them would do nothing), each R1 name inserted where TransformerLens's
   alphabetical order (`str.casefold`) puts it, as TransformerLens's own tests require.
2. `loading_from_pretrained.get_official_model_name`: official names and aliases resolve exactly as before; a name
   TransformerLens does not know resolves to a local checkpoint folder when it is written as a path
   (`r1_plugin.models.local_folders`), else an error names the closest registered names.
3. `loading_from_pretrained.convert_hf_model_config`: for the R1 family (r1_plugin's names, DeepSeek-V3 folders,
   distill folders) read the HF config and convert it ourselves; everything else goes to TransformerLens's
   conversion unchanged. TL's own chain assumes any name containing "llama" is a Meta Llama and never reads the
   config (TL issue #897: a registered `...Distill-Llama-8B` crashes with `'NoneType' ... hidden_size`).
4. `loading_from_pretrained.get_pretrained_state_dict` and the `AutoTokenizer` that `HookedTransformer.__init__`
   uses: translate "not in the cache while offline" into an error naming the repo/file and how to fetch it.
Every wrapper takes and forwards `*args, **kwargs`, so a parameter a later TransformerLens adds passes through.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
from pathlib import Path
from typing import Any

import transformer_lens.loading_from_pretrained as loading
from transformer_lens import supported_models

from r1_plugin._patches._hooked import hooked_transformer_module
from r1_plugin._patches._marks import is_patched, keep, mark, replace, require
from r1_plugin.errors import (
    MissingFromCacheError,
    UnknownModelError,
    UnsupportedArchitectureError,
    hub_offline,
    missing_from_cache,
)
from r1_plugin.models import configs, local_folders, model_names

logger = logging.getLogger(__name__)

PATCH = "tl_models"


def _insert_sorted(names: list[str], name: str) -> None:
    """Insert `name` where TransformerLens's alphabetical order (`str.casefold`) puts it."""
    names.insert(bisect.bisect_right([n.casefold() for n in names], name.casefold()), name)


def register_model_names() -> None:
    """Add every R1 model id and alias to TransformerLens's registry (in place, sorted, idempotent)."""
    names = require(supported_models, "OFFICIAL_MODEL_NAMES", PATCH)
    aliases = require(supported_models, "MODEL_ALIASES", PATCH)
    keep(names)
    keep(aliases)
    for spec in model_names.ALL_MODELS:
        if spec.hf_id not in names:
            _insert_sorted(names, spec.hf_id)
    new_keys = [spec.hf_id for spec in model_names.ALL_MODELS if spec.hf_id not in aliases]
    if new_keys:
        # A dict keeps insertion order: rebuild it in place with the new keys at their sorted positions.
        keys = list(aliases)
        for key in new_keys:
            _insert_sorted(keys, key)
        old = dict(aliases)
        aliases.clear()
        aliases.update({key: old.get(key, []) for key in keys})
    for spec in model_names.ALL_MODELS:
        known = aliases[spec.hf_id]
        for alias in spec.aliases:
            if alias not in known:
                known.append(alias)


def _patch_get_official_model_name() -> None:
    original = require(loading, "get_official_model_name", PATCH)
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_official_model_name(model_name: str, *args: Any, **kwargs: Any) -> str:
        try:
            return original(model_name, *args, **kwargs)
        except ValueError as exc:
            folder = local_folders.local_folder(model_name)
            if folder is not None:
                return str(folder)
            candidates = supported_models.OFFICIAL_MODEL_NAMES + [
                a for als in supported_models.MODEL_ALIASES.values() for a in als
            ]
            close = model_names.closest_names(model_name, candidates)
            hint = f" Closest registered names: {', '.join(close)}." if close else ""
            raise UnknownModelError(
                f"{model_name!r} is not a model TransformerLens or r1_plugin knows.{hint} "
                "For a checkpoint on disk, pass its folder as a path (e.g. `./my-model`; it must contain "
                "config.json); `r1_plugin.list_models()` lists the R1 models."
            ) from exc

    # HookedTransformer calls it as `loading.get_official_model_name`, and loading's own functions look the global
    # up at call time, so replacing the module attribute covers both.
    replace(loading, "get_official_model_name", mark(get_official_model_name, original))


def load_hf_config(name: str, *args: Any, **kwargs: Any) -> Any:
    """`AutoConfig.from_pretrained(name, *args, **kwargs)` as TransformerLens calls it (token from HF_TOKEN), with a
    clear error when the file is not cached and the hub is unreachable."""
    from transformers import AutoConfig

    allowed = dict(kwargs)
    allowed.setdefault("token", os.environ.get("HF_TOKEN") or None)
    with missing_from_cache(name, "config.json"):
        return AutoConfig.from_pretrained(name, *args, **allowed)


def r1_family_name(model_name: Any) -> str | None:
    """The name r1_plugin converts itself (an R1 HF id, or an R1-family local folder), else None."""
    if not isinstance(model_name, str):
        return None
    folder = local_folders.local_folder(model_name)
    if folder is not None:
        arch = local_folders.folder_architecture(folder)
        if arch == "":
            raise UnsupportedArchitectureError(
                f"{model_name}: its config.json names no architecture (`architectures` is missing or empty), so "
                "it cannot be loaded as a HookedTransformer; add e.g. `\"architectures\": [\"LlamaForCausalLM\"]`."
            )
        return str(folder) if local_folders.is_r1_family_folder(folder) else None
    spec = model_names.lookup(model_name)
    return spec.hf_id if spec is not None else None


def _patch_convert_hf_model_config() -> None:
    original = require(loading, "convert_hf_model_config", PATCH)
    if is_patched(original):
        return

    @functools.wraps(original)
    def convert_hf_model_config(model_name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        official = r1_family_name(model_name)
        if official is None:
            try:
                return original(model_name, *args, **kwargs)
            except NotImplementedError as exc:
                folder = local_folders.local_folder(model_name)
                if folder is None:
                    raise
                raise UnsupportedArchitectureError(
                    f"{model_name}: its config.json says architecture {local_folders.folder_architecture(folder)!r}, which "
                    "neither TransformerLens nor r1_plugin (DeepseekV3ForCausalLM, the R1 distills) can load as a "
                    f"HookedTransformer ({exc})."
                ) from exc
        hf_config = load_hf_config(official, *args, **kwargs)
        return configs.hf_to_tl_config(hf_config, official)

    replace(loading, "convert_hf_model_config", mark(convert_hf_model_config, original))


def _patch_get_pretrained_state_dict() -> None:
    original = require(loading, "get_pretrained_state_dict", PATCH)
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_pretrained_state_dict(official_model_name: str, *args: Any, **kwargs: Any) -> Any:
        with missing_from_cache(official_model_name, "model weights (*.safetensors)"):
            return original(official_model_name, *args, **kwargs)

    replace(loading, "get_pretrained_state_dict", mark(get_pretrained_state_dict, original))


# Any one of these in the cache means the repo's tokenizer can be built offline.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def tokenizer_missing_offline(name: str, revision: str | None = None, cache_dir: Any = None) -> bool:
    """Whether `name` is a hub repo none of whose tokenizer files is cached while HF_HUB_OFFLINE is set.

    transformers 5 does not raise then: it builds a tokenizer from config.json's model_type with an EMPTY
    vocabulary (every text encodes to []) or fails with an unrelated sentencepiece message.
    """
    if not hub_offline() or not isinstance(name, str) or Path(name).expanduser().is_dir():
        return False
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    for filename in TOKENIZER_FILES:
        try:
            if isinstance(try_to_load_from_cache(name, filename, cache_dir=cache_dir, revision=revision), str):
                return False
        except HFValidationError as exc:  # not a repo id: transformers' own error says what is wrong with it
            logger.info("%r is not a Hugging Face repo id (%s); transformers loads or rejects it itself", name, exc)
            return False
    return True


class _AutoTokenizerWithClearErrors:
    """Stands in for `AutoTokenizer` inside HookedTransformer so a tokenizer missing offline gets a clear error."""

    _r1_plugin_patched = True

    def __init__(self, auto_tokenizer: Any) -> None:
        self._auto = auto_tokenizer

    def from_pretrained(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if tokenizer_missing_offline(name, kwargs.get("revision"), kwargs.get("cache_dir")):
            raise MissingFromCacheError(name, "tokenizer files (tokenizer.json, tokenizer_config.json)")
        with missing_from_cache(name, "tokenizer files (tokenizer.json, tokenizer_config.json)"):
            return self._auto.from_pretrained(name, *args, **kwargs)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._auto, item)


def _patch_tokenizer_errors() -> None:
    current = require(hooked_transformer_module, "AutoTokenizer", PATCH)
    if is_patched(current):
        return
    replace(hooked_transformer_module, "AutoTokenizer", _AutoTokenizerWithClearErrors(current))


def apply() -> None:
    """Apply the model-registry patches (idempotent)."""
    register_model_names()
    _patch_get_official_model_name()
    _patch_convert_hf_model_config()
    _patch_get_pretrained_state_dict()
    _patch_tokenizer_errors()
