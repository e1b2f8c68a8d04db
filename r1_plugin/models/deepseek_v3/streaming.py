"""Streaming DeepSeek-V3 weights into a HookedTransformer built on the meta device: shard by shard, tensor by
tensor, each checked against the config, FP8 dequantised (or kept with keep_fp8), copied onto its target device."""

from __future__ import annotations

import ctypes
from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn
import tqdm.auto as tqdm

from r1_plugin.errors import CheckpointError
from r1_plugin.models.deepseek_v3.checkpoint_files import WEIGHT_DTYPES, CheckpointFiles
from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig, validate_config
from r1_plugin.models.deepseek_v3.fp8 import check_scale_shape, dequantize_blockwise, is_fp8
from r1_plugin.models.deepseek_v3.fp8_weights import fp8_layout, keep_fp8_weight, select_rows, tl_view
from r1_plugin.models.deepseek_v3.weight_names import destinations, published_shape

# Checkpoint dtypes that hold weights (FP8 with its weight_scale_inv); anything else would be cast silently.


def target_device(name: str, cfg: DeepseekV3HookedConfig) -> torch.device:
    """Pipeline split (TL's, or cfg.device_plan's by bytes): embed with block 0, block i on its device, final norm
    and unembed with the last block."""
    from r1_plugin.models.device_plan import block_device

    if name.startswith("blocks."):
        return block_device(int(name.split(".")[1]), cfg)
    if name.startswith("embed"):
        return block_device(0, cfg)
    return block_device(cfg.n_layers - 1, cfg)


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return model.get_submodule(module_path), attr


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace a (meta) parameter or buffer by `tensor`."""
    module, attr = _owner(model, name)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=bool(old is not None and old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise KeyError(f"{name} is not a parameter or buffer of the model")


def materialise(value: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy of `value` in freshly allocated storage on `device` (never a view of the shard's mmap).

    safe_open returns tensors backed by the shard's memory map, and `.to()` at the file's dtype is a no-op: a
    parameter aliasing it would keep the whole shard file mapped (and counted in RSS) for the model's lifetime.
    The copy keeps the checkpoint's memory layout (`empty_like` preserves the dimension order of the TL-oriented
    view): W_U stays a transposed view of lm_head's [vocab, d_model] layout (TL's Unembed's `W_U.T.contiguous()`
    is then free), and W_Q_b/W_K_b/W_V_b keep HF's [head, out, in] storage, so attention multiplies all heads at
    once through a view (`heads_matrix`) instead of copying the weight on every forward.
    """
    return torch.empty_like(value, dtype=dtype, device=device).copy_(value)


def release_freed_memory() -> None:
    """Return freed heap pages to the OS after each shard (glibc keeps them, so RSS would creep up per shard)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StreamingLoader:
    """Reads the tensors a DeepSeek-V3 HookedTransformer needs, shard by shard, into the meta-built model."""

    def __init__(
        self, model: nn.Module, files: CheckpointFiles, hf_config: dict[str, Any], keep_fp8: bool = False
    ) -> None:
        self.model = model
        self.keep_fp8 = keep_fp8
        self.fp8_experts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # stacks being filled, per name
        self.cfg: DeepseekV3HookedConfig = model.cfg  # type: ignore[assignment]
        self.files = files
        validate_config(hf_config, files.name)
        quant = hf_config.get("quantization_config") or {}
        self.block_size = tuple(quant.get("weight_block_size") or (128, 128))
        self.expected = {
            name: t for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"
        }
        self.filled_experts: dict[str, set[int]] = defaultdict(set)
        self.norm_weights: dict[str, torch.Tensor] = {}  # ln weights kept aside for fold_ln
        self.shards_read: list[str] = []

    def load(self, progress: bool = True) -> None:
        """Stream every needed tensor into the model; raise listing anything the checkpoint lacks."""
        weight_map = self.files.weight_map()
        by_shard: dict[str, list[str]] = defaultdict(list)
        for key, shard in weight_map.items():
            if destinations(key, self.cfg):
                by_shard[shard].append(key)
        self.files.check_shards_present(sorted(by_shard))
        for shard in tqdm.tqdm(sorted(by_shard), desc="Loading DeepSeek-V3 shards", disable=not progress):
            self.shards_read.append(shard)
            with self.files.open(shard) as handle:
                for key in by_shard[shard]:
                    tensor = self.files.tensor(handle, key, shard)
                    scale = self._scale(key, handle, weight_map, shard) if is_fp8(tensor) else None
                    self.add(key, tensor, scale, shard=shard)
                    del tensor, scale  # shard-mmap views: the shard is unmapped once its handle closes
            release_freed_memory()
        self._finish()

    def add(self, key: str, tensor: torch.Tensor, scale: torch.Tensor | None = None, shard: str | None = None) -> None:
        """Store checkpoint tensor `key` (FP8 with its `scale`: kept FP8 with keep_fp8, else dequantised)."""
        self._check(key, tensor, scale, shard)
        for name, expert, transform in destinations(key, self.cfg) or []:
            if scale is None:
                self._store(name, expert, transform(tensor))
            elif self.keep_fp8 and fp8_layout(name, self.cfg) is not None:
                self._store_fp8(name, expert, tensor, scale)
            else:
                value = dequantize_blockwise(tensor, scale, self.block_size, self.cfg.dtype)
                self._store(name, expert, transform(value))

    def finish(self) -> None:
        """Check every parameter was given (after the last `add`)."""
        self._finish()

    def _check(self, key: str, tensor: torch.Tensor, scale: torch.Tensor | None, shard: str | None) -> None:
        """A tensor whose dtype or shape the config cannot take is an error naming it and its shard."""
        problem = None
        shape = published_shape(key, self.cfg)
        if tensor.dtype not in WEIGHT_DTYPES:
            problem = f"stores {key} as {tensor.dtype}, which is not a weight dtype (float32/16/64, bfloat16, FP8)"
        elif is_fp8(tensor) and scale is None:
            problem = f"stores {key} in FP8 without its weight_scale_inv"
        elif shape is not None and tuple(tensor.shape) != shape:
            problem = (
                f"stores {key} with shape {tuple(tensor.shape)}, but config.json gives it {shape}: the shard is "
                "damaged, or config.json belongs to another model"
            )
        if problem is None:
            if scale is not None and is_fp8(tensor):  # named by shard here; a broadcastable wrong scale never loads
                check_scale_shape(key, tensor.shape, scale.shape, self.block_size, shard=shard)
            return
        if shard is None:
            raise CheckpointError(f"{self.files.name}: {problem}")
        raise self.files.damaged(shard, problem)

    def _scale(self, key: str, handle: Any, weight_map: dict[str, str], shard: str) -> torch.Tensor:
        """The weight_scale_inv of FP8 tensor `key` (from its shard, or the small tensor from another shard)."""
        scale_key = key[: -len("weight")] + "weight_scale_inv"
        if scale_key not in weight_map:
            raise self.files.damaged(
                shard, f"stores {key} in FP8, but the checkpoint has no {scale_key} to dequantise it with"
            )
        if weight_map[scale_key] == shard:
            return self.files.tensor(handle, scale_key, shard)
        with self.files.open(weight_map[scale_key]) as other:  # scale in another shard: read just that tensor
            return self.files.tensor(other, scale_key, weight_map[scale_key])

    def _store_fp8(self, name: str, expert: int | None, fp8: torch.Tensor, scale: torch.Tensor) -> None:
        """Keep an FP8 checkpoint tensor as stored (e4m3 + scales) under TL name `name` (keep_fp8=True)."""
        if name not in self.expected:
            raise KeyError(f"checkpoint tensor for {name} does not fit this model config (absent, or given twice).")
        layout, heads, rows = fp8_layout(name, self.cfg)  # type: ignore[misc]
        meta = self.expected[name]
        device = target_device(name, self.cfg)
        row_block = None
        if rows is not None:
            fp8, row_block = select_rows(fp8, 0, rows), rows // self.block_size[0]
        module, attr = _owner(self.model, name)
        if expert is None:
            shape = tuple(tl_view(torch.empty(fp8.shape, device="meta"), layout, heads).shape)
            if shape != tuple(meta.shape):
                raise ValueError(f"{name}: checkpoint gives shape {shape}, config needs {tuple(meta.shape)}.")
            keep_fp8_weight(module, attr, materialise(fp8, fp8.dtype, device), materialise(scale, torch.float32, device),
                            self.block_size, self.cfg.dtype, layout, heads, row_block)
            del self.expected[name]
            return
        if tuple(fp8.t().shape) != tuple(meta.shape[1:]):
            raise ValueError(f"{name}[{expert}]: checkpoint gives {tuple(fp8.t().shape)}, need {tuple(meta.shape[1:])}.")
        n_experts = meta.shape[0]
        if name not in self.fp8_experts:
            self.fp8_experts[name] = (
                torch.empty((n_experts, *fp8.shape), dtype=fp8.dtype, device=device),
                torch.empty((n_experts, *scale.shape), dtype=torch.float32, device=device),
            )
        stack, scales = self.fp8_experts[name]
        stack[expert].copy_(fp8)
        scales[expert].copy_(scale)
        filled = self.filled_experts[name]
        filled.add(expert)
        if len(filled) == n_experts:
            keep_fp8_weight(module, attr, stack, scales, self.block_size, self.cfg.dtype, layout)
            del self.fp8_experts[name], self.expected[name]

    def _store(self, name: str, expert: int | None, value: torch.Tensor) -> None:
        if name not in self.expected:
            if name.endswith((".ln1.w", ".ln2.w")) or name == "ln_final.w":
                self.norm_weights[name] = value.to(torch.float32).clone()  # RMSPre model: folded after loading
                return
            raise KeyError(
                f"checkpoint tensor for {name} does not fit this model config (absent, or given twice); "
                "does config.json match the weights (q_lora_rank, attention_bias, first_k_dense_replace)?"
            )
        meta = self.expected[name]
        dtype = torch.float32 if name.endswith("e_score_correction_bias") else meta.dtype
        device = target_device(name, self.cfg)
        if expert is None:
            if tuple(value.shape) != tuple(meta.shape):
                raise ValueError(f"{name}: checkpoint gives shape {tuple(value.shape)}, config needs {tuple(meta.shape)}.")
            _assign(self.model, name, materialise(value, dtype, device))
            del self.expected[name]
            return
        filled = self.filled_experts[name]
        if not filled:
            # The checkpoint's [E, out, in] storage viewed as TL's [E, in, out] (as `materialise` keeps other
            # weights' layout): the grouped matmuls then read the same layout with or without keep_fp8, so both
            # give bit-identical products, and it is the layout transformers multiplies with.
            e, rows, cols = meta.shape
            _assign(self.model, name, torch.empty((e, cols, rows), dtype=dtype, device=device).transpose(1, 2))
        param = _owner_param(self.model, name)
        if tuple(value.shape) != tuple(param.shape[1:]):
            raise ValueError(f"{name}[{expert}]: checkpoint gives {tuple(value.shape)}, need {tuple(param.shape[1:])}.")
        with torch.no_grad():
            param[expert].copy_(value)
        filled.add(expert)
        if len(filled) == param.shape[0]:
            del self.expected[name]

    def _finish(self) -> None:
        """Zero-initialise TL-only tensors (unembed.b_U) and check every parameter came from the checkpoint."""
        if "unembed.W_U" in self.expected and self.cfg.tie_word_embeddings:
            del self.expected["unembed.W_U"]
            _assign(self.model, "unembed.W_U", self.model.embed.W_E.t().to(target_device("unembed.W_U", self.cfg)))
        for name in list(self.expected):
            if name == "unembed.b_U":
                meta = self.expected.pop(name)
                _assign(self.model, name, torch.zeros(meta.shape, dtype=meta.dtype, device=target_device(name, self.cfg)))
        if self.expected:
            missing = sorted(self.expected)
            partial = {n: sorted(set(range(self.expected[n].shape[0])) - s) for n, s in self.filled_experts.items() if n in self.expected}
            raise ValueError(
                f"{self.files.name}: the checkpoint lacks tensors for {len(missing)} model parameters, e.g. "
                f"{missing[:5]}" + (f"; experts missing: { {k: v[:8] for k, v in partial.items()} }" if partial else "")
                + ". Is it a complete DeepseekV3ForCausalLM checkpoint matching its config.json?"
            )


def _owner_param(model: nn.Module, name: str) -> torch.Tensor:
    module, attr = _owner(model, name)
    return module._parameters[attr]  # type: ignore[return-value]
