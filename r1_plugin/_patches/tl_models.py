"""Patches into TransformerLens 3.9's model registry and config loading so R1's models load by their HF names.

TransformerLens has no plugin API for HookedTransformer (TL issue #888), so a third party must patch:
1. `supported_models.OFFICIAL_MODEL_NAMES` / `MODEL_ALIASES`: mutated in place (loading_from_pretrained imported
   the same objects by name; rebinding them would do nothing).
2. `loading_from_pretrained.get_official_model_name`: accept local folders whose config.json names a supported
   architecture, and say which registered names are closest when a name is unknown.
3. `loading_from_pretrained.convert_hf_model_config`: for r1_plugin's names and local folders, read the HF config
   and convert it ourselves. TL's own chain assumes any name containing "llama" is a Meta Llama and never reads
   the config (TL issue #897: a registered `...Distill-Llama-8B` crashes with `'NoneType' ... hidden_size`).
4. `loading_from_pretrained.get_pretrained_state_dict` and the `AutoTokenizer` that `HookedTransformer.__init__`
   uses: translate "not in the cache while offline" into an error naming the repo/file and how to fetch it.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import transformer_lens.loading_from_pretrained as loading
from transformer_lens import supported_models

from r1_plugin._patches._marks import hooked_transformer_module, is_patched, mark
from r1_plugin.errors import (
    MissingFromCacheError,
    UnknownModelError,
    UnsupportedArchitectureError,
    hub_offline,
    is_missing_file_error,
)
from r1_plugin.models import configs, registry


def local_checkpoint_architecture(model_name: str) -> str | None:
    """The architecture named by `<folder>/config.json` when `model_name` is a local checkpoint folder, else None."""
    config_path = Path(model_name).expanduser() / "config.json"
    if not config_path.is_file():
        return None
    try:
        archs = json.loads(config_path.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedArchitectureError(f"{config_path} is not a readable HF config.json: {exc}") from exc
    return archs[0] if archs else ""


def register_model_names() -> None:
    """Add every R1 model id and alias to TransformerLens's registry (in place, idempotent)."""
    names = supported_models.OFFICIAL_MODEL_NAMES
    aliases = supported_models.MODEL_ALIASES
    for spec in registry.ALL_MODELS:
        if spec.hf_id not in names:
            names.append(spec.hf_id)
        known = aliases.setdefault(spec.hf_id, [])
        for alias in spec.aliases:
            if alias not in known:
                known.append(alias)


def _patch_get_official_model_name() -> None:
    original = loading.get_official_model_name
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_official_model_name(model_name: str) -> str:
        arch = local_checkpoint_architecture(model_name)
        if arch is not None:
            return str(Path(model_name).expanduser())
        try:
            return original(model_name)
        except ValueError as exc:
            candidates = supported_models.OFFICIAL_MODEL_NAMES + [
                a for als in supported_models.MODEL_ALIASES.values() for a in als
            ]
            close = registry.closest_names(model_name, candidates)
            hint = f" Closest registered names: {', '.join(close)}." if close else ""
            raise UnknownModelError(
                f"{model_name!r} is not a model TransformerLens or r1_plugin knows.{hint} "
                "For a checkpoint on disk, pass its folder (it must contain config.json); "
                "`r1_plugin.list_models()` lists the R1 models."
            ) from exc

    # HookedTransformer calls it as `loading.get_official_model_name`, and loading's own functions look the global
    # up at call time, so replacing the module attribute covers both.
    loading.get_official_model_name = mark(get_official_model_name, original)


def load_hf_config(name: str, **kwargs: Any) -> Any:
    """`AutoConfig.from_pretrained` with a clear error when the file is not cached and the hub is unreachable."""
    from transformers import AutoConfig

    token = os.environ.get("HF_TOKEN") or None
    allowed = {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "local_files_only", "token")}
    allowed.setdefault("token", token)
    try:
        return AutoConfig.from_pretrained(name, **allowed)
    except Exception as exc:
        if is_missing_file_error(exc):
            raise MissingFromCacheError(name, "config.json") from exc
        raise


def _patch_convert_hf_model_config() -> None:
    original = loading.convert_hf_model_config
    if is_patched(original):
        return

    @functools.wraps(original)
    def convert_hf_model_config(model_name: str, **kwargs: Any) -> dict[str, Any]:
        arch = local_checkpoint_architecture(model_name)
        spec = registry.lookup(model_name) if arch is None else None
        if arch is None and spec is None:
            return original(model_name, **kwargs)
        if arch == "":
            raise UnsupportedArchitectureError(
                f"{model_name}: its config.json names no architecture (`architectures` is missing or empty), so "
                "it cannot be loaded as a HookedTransformer; add e.g. `\"architectures\": [\"LlamaForCausalLM\"]` "
                f"(r1_plugin converts {', '.join(registry.SUPPORTED_ARCHITECTURES)})."
            )
        if arch is not None and arch not in registry.SUPPORTED_ARCHITECTURES:
            try:
                return original(model_name, **kwargs)
            except NotImplementedError as exc:
                raise UnsupportedArchitectureError(
                    f"{model_name}: its config.json says architecture {arch!r}, which neither r1_plugin "
                    f"({', '.join(registry.SUPPORTED_ARCHITECTURES)}) nor TransformerLens can load as a "
                    "HookedTransformer."
                ) from exc
        official = str(Path(model_name).expanduser()) if arch is not None else spec.hf_id
        hf_config = load_hf_config(official, **kwargs)
        return configs.hf_to_tl_config(hf_config, official)

    loading.convert_hf_model_config = mark(convert_hf_model_config, original)


def _patch_get_pretrained_state_dict() -> None:
    original = loading.get_pretrained_state_dict
    if is_patched(original):
        return

    @functools.wraps(original)
    def get_pretrained_state_dict(official_model_name: str, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(official_model_name, cfg, *args, **kwargs)
        except Exception as exc:
            if is_missing_file_error(exc):
                raise MissingFromCacheError(official_model_name, "model weights (*.safetensors)") from exc
            raise

    loading.get_pretrained_state_dict = mark(get_pretrained_state_dict, original)


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

    for filename in TOKENIZER_FILES:
        try:
            if isinstance(try_to_load_from_cache(name, filename, cache_dir=cache_dir, revision=revision), str):
                return False
        except Exception:  # an id huggingface_hub rejects: let transformers say what is wrong
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
        try:
            return self._auto.from_pretrained(name, *args, **kwargs)
        except Exception as exc:
            if is_missing_file_error(exc):
                raise MissingFromCacheError(name, "tokenizer files (tokenizer.json, tokenizer_config.json)") from exc
            raise

    def __getattr__(self, item: str) -> Any:
        return getattr(self._auto, item)


def _patch_tokenizer_errors() -> None:
    current = hooked_transformer_module.AutoTokenizer
    if is_patched(current):
        return
    hooked_transformer_module.AutoTokenizer = _AutoTokenizerWithClearErrors(current)


def apply() -> None:
    """Apply the model-registry patches (idempotent)."""
    register_model_names()
    _patch_get_official_model_name()
    _patch_convert_hf_model_config()
    _patch_get_pretrained_state_dict()
    _patch_tokenizer_errors()
