"""Entry point of the DeepSeek-V3/R1 loader: `HookedTransformer.from_pretrained` for a DeepSeek-V3 name or folder,
streaming safetensors shards tensor by tensor into a model built on the meta device (never AutoModelForCausalLM).

The loader's parts live in their own modules: checkpoint_files (locating and reading files), weight_names (checkpoint
name -> TL parameter), streaming (shards into the model) and weight_processing (folds); their public names are
re-exported here so `r1_plugin.models.deepseek_v3.loading.X` keeps working (instrument shard reads at
`checkpoint_files.open_safetensors`, where they happen).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from r1_plugin.models.deepseek_v3.checkpoint_files import (
    HUB_KWARGS,
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointFiles,
)
from r1_plugin.models.deepseek_v3.config import ARCHITECTURE, DeepseekV3HookedConfig, validate_config
from r1_plugin.models.deepseek_v3.streaming import (
    StreamingLoader,
    materialise,
    release_freed_memory,
    target_device,
)
from r1_plugin.models.deepseek_v3.weight_names import Destination, destinations, published_shape
from r1_plugin.models.deepseek_v3.weight_processing import (
    PROCESSING_HELP,
    center_unembed_weights,
    fold_layer_norms,
    load_and_process_into,
    refuse_refactor,
)

__all__ = [
    "INDEX_FILE", "PROCESSING_HELP", "SINGLE_FILE", "CheckpointFiles", "Destination", "StreamingLoader",
    "center_unembed_weights", "deepseek_official_name", "destinations", "fold_layer_norms", "load_and_process_into",
    "load_pretrained", "materialise", "published_shape", "release_freed_memory",
    "target_device",
]

logger = logging.getLogger(__name__)

# Further keywords TL's from_pretrained forwards to HF that mean nothing here but are harmless; anything else errors.
_ACCEPTED_KWARGS = (*HUB_KWARGS, "trust_remote_code", "torch_dtype", "load_in_8bit", "load_in_4bit")


def deepseek_official_name(model_name: str) -> str | None:
    """The HF id (or expanded local folder) when `model_name` is a DeepSeek-V3 model r1_plugin loads, else None."""
    from r1_plugin.models import local_folders, model_names

    if not isinstance(model_name, str):
        return None
    folder = local_folders.local_folder(model_name)
    if folder is not None:
        return str(folder) if local_folders.folder_architecture(folder) == ARCHITECTURE else None
    spec = model_names.lookup(model_name)
    return spec.hf_id if spec is not None and spec.architecture == ARCHITECTURE else None


def _check_keywords(kwargs: dict[str, Any], official_name: str) -> None:
    """Refuse keywords that mean nothing here (TypeError, as Python would) and quantised loading (ValueError);
    drops the harmless load_in_* flags."""
    unknown = sorted(set(kwargs) - set(_ACCEPTED_KWARGS))
    if unknown:
        raise TypeError(
            f"from_pretrained() got unexpected keyword argument(s) {unknown} for DeepSeek-V3 model {official_name}; "
            "see docs/models-deepseek.md for the accepted arguments (e.g. keep_fp8, n_devices, first_n_layers, "
            "memory_per_device)."
        )
    for key in ("load_in_8bit", "load_in_4bit"):
        if kwargs.pop(key, False):
            raise ValueError(f"{key} is not supported for DeepSeek-V3; FP8 checkpoints are dequantised to `dtype`.")


def _refuse_unsupported(official_name: str, refactor: bool, checkpoint: tuple[int | None, ...], hf_model: Any,
                        kwargs: dict[str, Any]) -> None:
    """Refuse, before anything is read, the from_pretrained arguments that cannot apply to DeepSeek-V3."""
    refuse_refactor(refactor)
    if any(v is not None for v in checkpoint):
        raise ValueError(f"{official_name} has no training checkpoints; drop checkpoint_index/checkpoint_value.")
    if hf_model is not None:
        raise ValueError(
            "hf_model is not used for DeepSeek-V3: r1_plugin streams the safetensors shards itself (an HF model "
            "of R1 would need ~1.3 TB of RAM). Pass the model name or checkpoint folder only."
        )
    _check_keywords(kwargs, official_name)


def _hooked_config(official_name: str, hf_config: dict[str, Any], keep_fp8: bool, **config_kwargs: Any) -> Any:
    """TransformerLens' config for the model (a DeepseekV3HookedConfig, built through the patched registry), with
    keep_fp8 set only where the checkpoint is quantised."""
    import transformer_lens.loading_from_pretrained as loading

    cfg = loading.get_pretrained_model_config(official_name, **config_kwargs)
    if not isinstance(cfg, DeepseekV3HookedConfig):
        raise TypeError(
            "the DeepSeek-V3 config was not built as DeepseekV3HookedConfig: call `import r1_plugin` "
            "(r1_plugin._patches.tl_deepseek.apply()) before loading."
        )
    cfg.keep_fp8 = bool(keep_fp8) and bool(hf_config.get("quantization_config"))
    return cfg


def load_pretrained(
    cls: type,
    model_name: str,
    official_name: str,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    refactor_factored_attn_matrices: bool = False,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    checkpoint_label: int | None = None,
    hf_model: Any = None,
    device: str | torch.device | None = None,
    n_devices: int = 1,
    tokenizer: Any = None,
    move_to_device: bool = True,
    fold_value_biases: bool = True,
    default_prepend_bos: bool | None = None,
    default_padding_side: str | None = None,
    dtype: Any = "float32",
    first_n_layers: int | None = None,
    n_ctx: int | None = None,
    progress: bool = True,
    keep_fp8: bool = False,
    memory_per_device: int | str | None = None,
    **from_pretrained_kwargs: Any,
) -> Any:
    """HookedTransformer.from_pretrained for DeepSeek-V3 (same arguments; see docs/models-deepseek.md).

    Weight processing: fold_ln folds the RMSNorm weights exactly; center_unembed is exact for log-probs;
    center_writing_weights is skipped for RMSNorm models as TransformerLens does; MLA has no value biases, so
    fold_value_biases has nothing to fold; refactor_factored_attn_matrices is refused (MLA has no per-head W_Q/W_K).

    keep_fp8=True keeps the checkpoint's FP8 weights as e4m3 + scales and dequantises them per forward (same
    numbers, about half the memory of bfloat16). With n_devices > 1 (on an accelerator) blocks are placed by bytes
    (r1_plugin.plan_devices); when the plan does not fit `memory_per_device` (default: each device's total memory)
    loading stops before any weight is read with ModelDoesNotFitError.
    """
    from transformer_lens.HookedTransformer import DTYPE_FROM_STRING

    _refuse_unsupported(official_name, refactor_factored_attn_matrices,
                        (checkpoint_index, checkpoint_value, checkpoint_label), hf_model, from_pretrained_kwargs)
    if isinstance(dtype, str):
        dtype = DTYPE_FROM_STRING[dtype]
    dtype = from_pretrained_kwargs.pop("torch_dtype", dtype)
    if center_writing_weights:
        logger.info("center_writing_weights is skipped for RMSNorm models (as TransformerLens does for Llama).")

    files = CheckpointFiles(official_name, from_pretrained_kwargs)
    hf_config = files.config()
    validate_config(hf_config, official_name)  # before anything is built: a bad value named here, not in forward
    n_hidden = hf_config["num_hidden_layers"]
    if first_n_layers is not None and not 1 <= first_n_layers <= n_hidden:
        raise ValueError(f"first_n_layers={first_n_layers} must be between 1 and {n_hidden} for {official_name}.")

    cfg = _hooked_config(official_name, hf_config, keep_fp8, fold_ln=fold_ln, device=device, n_devices=n_devices,
                         default_prepend_bos=default_prepend_bos, dtype=dtype, first_n_layers=first_n_layers,
                         n_ctx=n_ctx, **from_pretrained_kwargs)
    from r1_plugin.models.device_plan import place_model

    place_model(cfg, hf_config, official_name, memory_per_device)
    with torch.device("meta"):
        model = cls(cfg, tokenizer, move_to_device=False, default_padding_side=default_padding_side)
    loader = StreamingLoader(model, files, hf_config, keep_fp8=keep_fp8)
    loader.load(progress=progress)
    if cfg.normalization_type == "RMSPre":
        fold_layer_norms(model, loader.norm_weights)
    if center_unembed:
        center_unembed_weights(model)
    if not move_to_device:
        logger.info("move_to_device=False: weights were still materialised on their target devices.")
    print(f"Loaded pretrained model {model_name} into HookedTransformer")
    return model
