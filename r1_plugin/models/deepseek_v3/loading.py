"""Streaming loader for DeepSeek-V3/R1 checkpoints: safetensors shards read tensor by tensor, FP8 dequantised,
written straight into a HookedTransformer built on the meta device (never through AutoModelForCausalLM)."""

from __future__ import annotations

import ctypes
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import tqdm.auto as tqdm

from r1_plugin.models.deepseek_v3.config import ARCHITECTURE, DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.fp8 import dequantize_blockwise, is_fp8
from r1_plugin.models.deepseek_v3.fp8_weights import (
    fp8_layout,
    fp8_parts,
    keep_fp8_weight,
    select_rows,
    tl_view,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only")
# Further keywords TL's from_pretrained forwards to HF that mean nothing here but are harmless; anything else errors.
_ACCEPTED_KWARGS = (*_HUB_KWARGS, "trust_remote_code", "torch_dtype", "load_in_8bit", "load_in_4bit")

PROCESSING_HELP = (
    "Load DeepSeek-V3/R1 with `HookedTransformer.from_pretrained_no_processing(...)` (or pass "
    "refactor_factored_attn_matrices=False)."
)


def deepseek_official_name(model_name: str) -> str | None:
    """The HF id (or expanded local folder) when `model_name` is a DeepSeek-V3 model r1_plugin loads, else None."""
    from r1_plugin.models import local, registry

    if not isinstance(model_name, str):
        return None
    folder = local.local_folder(model_name)
    if folder is not None:
        return str(folder) if local.folder_architecture(folder) == ARCHITECTURE else None
    spec = registry.lookup(model_name)
    return spec.hf_id if spec is not None and spec.architecture == ARCHITECTURE else None


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """Open one shard for lazy per-tensor reads (module-level so tests can instrument shard access)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        yield handle


class CheckpointFiles:
    """Resolves a checkpoint's files in a local folder or the HF cache (downloading lazily, one file at a time)."""

    def __init__(self, name: str, hub_kwargs: dict[str, Any]) -> None:
        self.name = name
        # Local folders arrive absolute (r1_plugin.models.local); a relative name is a hub id even if a folder of
        # that name happens to exist in the working directory.
        self.local = Path(name) if Path(name).is_absolute() and Path(name).is_dir() else None
        self.hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in _HUB_KWARGS}
        self.cache_misses: list[str] = []  # files `exists` found absent only because they are not cached offline

    def path(self, filename: str) -> Path:
        """Local path of `filename`, fetched through huggingface_hub for hub repos."""
        if self.local is not None:
            path = self.local / filename
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; the checkpoint folder is incomplete.")
            return path
        from huggingface_hub import hf_hub_download

        from r1_plugin.errors import MissingFromCacheError, is_missing_file_error

        try:
            return Path(hf_hub_download(self.name, filename, **self.hub_kwargs))
        except Exception as exc:
            if is_missing_file_error(exc):
                raise MissingFromCacheError(self.name, filename) from exc
            raise

    def exists(self, filename: str) -> bool:
        """Whether the checkpoint has `filename` (without downloading weights)."""
        if self.local is not None:
            return (self.local / filename).is_file()
        from r1_plugin.errors import MissingFromCacheError

        try:
            self.path(filename)
            return True
        except MissingFromCacheError:
            self.cache_misses.append(filename)
            return False
        except (FileNotFoundError, OSError):
            return False
        except Exception as exc:  # huggingface_hub raises its own types for missing entries
            if type(exc).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError"):
                return False
            raise

    def config(self) -> dict[str, Any]:
        """The raw config.json."""
        return json.loads(self.path("config.json").read_text())

    def weight_map(self) -> dict[str, str]:
        """Tensor name -> shard file name, from the index file or the single model.safetensors."""
        if self.exists(INDEX_FILE):
            return dict(json.loads(self.path(INDEX_FILE).read_text())["weight_map"])
        if self.exists(SINGLE_FILE):
            with open_safetensors(self.path(SINGLE_FILE)) as handle:
                return {key: SINGLE_FILE for key in handle.keys()}
        if INDEX_FILE in self.cache_misses and SINGLE_FILE in self.cache_misses:
            from r1_plugin.errors import MissingFromCacheError

            raise MissingFromCacheError(self.name, f"{INDEX_FILE} (or {SINGLE_FILE}) and its safetensors shards")
        raise FileNotFoundError(f"{self.name} has neither {INDEX_FILE} nor {SINGLE_FILE}.")


# One destination of a checkpoint tensor: (TL parameter name, expert index or None, transform of the HF tensor).
Destination = tuple[str, int | None, Callable[[torch.Tensor], torch.Tensor]]

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.t()


def destinations(key: str, cfg: DeepseekV3HookedConfig) -> list[Destination] | None:
    """Where a checkpoint tensor goes in the HookedTransformer (None: not part of the kept model, e.g. MTP)."""
    h, nope, v, qk = cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.qk_head_dim
    if key == "model.embed_tokens.weight":
        return [("embed.W_E", None, lambda w: w)]
    if key == "model.norm.weight":
        return [("ln_final.w", None, lambda w: w)]
    if key == "lm_head.weight":
        return [("unembed.W_U", None, _t)]
    match = _LAYER_RE.match(key)
    if match is None:
        return None
    layer, rest = int(match.group(1)), match.group(2)
    if layer >= cfg.n_layers:
        return None
    p = f"blocks.{layer}."
    simple: dict[str, Destination] = {
        "input_layernorm.weight": (p + "ln1.w", None, lambda w: w),
        "post_attention_layernorm.weight": (p + "ln2.w", None, lambda w: w),
        "self_attn.q_a_proj.weight": (p + "attn.W_Q_a", None, _t),
        "self_attn.q_a_proj.bias": (p + "attn.b_Q_a", None, lambda w: w),
        "self_attn.q_a_layernorm.weight": (p + "attn.q_a_norm.w", None, lambda w: w),
        "self_attn.q_b_proj.weight": (p + "attn.W_Q_b", None, lambda w: w.view(h, qk, -1).transpose(1, 2)),
        "self_attn.q_proj.weight": (p + "attn.W_Q", None, lambda w: w.view(h, qk, -1).transpose(1, 2)),
        "self_attn.kv_a_proj_with_mqa.weight": (p + "attn.W_KV_a", None, _t),
        "self_attn.kv_a_proj_with_mqa.bias": (p + "attn.b_KV_a", None, lambda w: w),
        "self_attn.kv_a_layernorm.weight": (p + "attn.kv_a_norm.w", None, lambda w: w),
        "self_attn.o_proj.weight": (p + "attn.W_O", None, lambda w: w.t().reshape(h, v, -1)),
        "self_attn.o_proj.bias": (p + "attn.b_O", None, lambda w: w),
        "mlp.gate_proj.weight": (p + "mlp.W_gate", None, _t),
        "mlp.up_proj.weight": (p + "mlp.W_in", None, _t),
        "mlp.down_proj.weight": (p + "mlp.W_out", None, _t),
        "mlp.gate.weight": (p + "mlp.W_router", None, _t),
        "mlp.gate.e_score_correction_bias": (p + "mlp.e_score_correction_bias", None, lambda w: w),
        "mlp.shared_experts.gate_proj.weight": (p + "mlp.shared_experts.W_gate", None, _t),
        "mlp.shared_experts.up_proj.weight": (p + "mlp.shared_experts.W_in", None, _t),
        "mlp.shared_experts.down_proj.weight": (p + "mlp.shared_experts.W_out", None, _t),
    }
    if rest in simple:
        return [simple[rest]]
    if rest == "self_attn.kv_b_proj.weight":
        return [
            (p + "attn.W_K_b", None, lambda w: w.view(h, nope + v, -1)[:, :nope].transpose(1, 2)),
            (p + "attn.W_V_b", None, lambda w: w.view(h, nope + v, -1)[:, nope:].transpose(1, 2)),
        ]
    expert = _EXPERT_RE.match(rest)
    if expert is not None:
        name = {"gate_proj": "W_gate", "up_proj": "W_in", "down_proj": "W_out"}[expert.group(2)]
        return [(p + f"mlp.experts.{name}", int(expert.group(1)), _t)]
    if rest == "mlp.experts.gate_up_proj":  # transformers 5 fused layout [E, 2*m, d]
        m = cfg.d_mlp_moe
        return [
            (p + "mlp.experts.W_gate", None, lambda w: w[:, :m].transpose(1, 2)),
            (p + "mlp.experts.W_in", None, lambda w: w[:, m:].transpose(1, 2)),
        ]
    if rest == "mlp.experts.down_proj":  # transformers 5 fused layout [E, d, m]
        return [(p + "mlp.experts.W_out", None, lambda w: w.transpose(1, 2))]
    if rest.endswith("weight_scale_inv"):
        return None
    logger.warning("ignoring unexpected checkpoint tensor %s", key)
    return None


def target_device(name: str, cfg: DeepseekV3HookedConfig) -> torch.device:
    """Pipeline split (TL's, or cfg.device_plan's by bytes): embed with block 0, block i on its device, final norm
    and unembed with the last block."""
    from r1_plugin.models.placement import block_device

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
        quant = hf_config.get("quantization_config") or {}
        self.block_size = tuple(quant.get("weight_block_size") or (128, 128))
        if quant and quant.get("quant_method") not in ("fp8", None):
            raise ValueError(
                f"{files.name}: quant_method {quant.get('quant_method')!r} is not supported; r1_plugin reads "
                "unquantised (bf16/fp16/fp32) and block-wise FP8 (DeepSeek's release format) checkpoints."
            )
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
        for shard in tqdm.tqdm(sorted(by_shard), desc="Loading DeepSeek-V3 shards", disable=not progress):
            self.shards_read.append(shard)
            with open_safetensors(self.files.path(shard)) as handle:
                for key in by_shard[shard]:
                    tensor = handle.get_tensor(key)
                    scale = self._scale(key, handle, weight_map, shard) if is_fp8(tensor) else None
                    self.add(key, tensor, scale)
                    del tensor, scale  # shard-mmap views: the shard is unmapped once its handle closes
            release_freed_memory()
        self._finish()

    def add(self, key: str, tensor: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Store checkpoint tensor `key` (FP8 with its `scale`: kept FP8 with keep_fp8, else dequantised)."""
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

    def _scale(self, key: str, handle: Any, weight_map: dict[str, str], shard: str) -> torch.Tensor:
        """The weight_scale_inv of FP8 tensor `key` (from its shard, or the small tensor from another shard)."""
        scale_key = key[: -len("weight")] + "weight_scale_inv"
        if scale_key not in weight_map:
            raise KeyError(f"{key} is FP8 but the checkpoint has no {scale_key} to dequantise it with.")
        if weight_map[scale_key] == shard:
            scale = handle.get_tensor(scale_key)
        else:  # scale stored in another shard: read just that (small) tensor
            with open_safetensors(self.files.path(weight_map[scale_key])) as other:
                scale = other.get_tensor(scale_key)
        return scale

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


@torch.no_grad()
def fold_layer_norms(model: nn.Module, norm_weights: dict[str, torch.Tensor]) -> None:
    """Fold ln1/ln2/ln_final RMSNorm weights into the matrices that read their output (exact for RMSNorm).

    ln1 -> W_Q_a (or W_Q) and W_KV_a; ln2 -> dense W_gate/W_in, or router, experts' and shared experts' W_gate/W_in;
    ln_final -> W_U. Products are taken in float32 and cast back; experts are folded one at a time. A weight kept
    in FP8 (keep_fp8) takes the same product after each dequantisation, so the fold stays exact there too.
    """
    cfg: DeepseekV3HookedConfig = model.cfg  # type: ignore[assignment]

    def scale_rows(module: nn.Module, attr: str, w: torch.Tensor, dim: int) -> None:
        parts = fp8_parts(module, attr)
        if parts is not None:  # kept FP8: the same product, taken after each dequantisation
            parts[1].fold_input_scale(w)
            return
        weight = getattr(module, attr)
        shape = [1] * weight.ndim
        shape[dim] = -1
        w = w.to(weight.device).view(shape)
        if weight.ndim == 3 and dim == 1:
            for i in range(weight.shape[0]):
                weight[i].copy_((weight[i].float() * w[0]).to(weight.dtype))
        else:
            weight.copy_((weight.float() * w).to(weight.dtype))

    for i, block in enumerate(model.blocks):  # type: ignore[attr-defined]
        ln1, ln2 = norm_weights.pop(f"blocks.{i}.ln1.w"), norm_weights.pop(f"blocks.{i}.ln2.w")
        attn = block.attn
        if cfg.q_lora_rank is not None:
            scale_rows(attn, "W_Q_a", ln1, 0)
        else:
            scale_rows(attn, "W_Q", ln1, 1)
        scale_rows(attn, "W_KV_a", ln1, 0)
        mlp = block.mlp
        if block.is_moe:
            scale_rows(mlp, "W_router", ln2, 0)
            scale_rows(mlp.experts, "W_gate", ln2, 1)
            scale_rows(mlp.experts, "W_in", ln2, 1)
            if mlp.shared_experts is not None:
                scale_rows(mlp.shared_experts, "W_gate", ln2, 0)
                scale_rows(mlp.shared_experts, "W_in", ln2, 0)
        else:
            scale_rows(mlp, "W_gate", ln2, 0)
            scale_rows(mlp, "W_in", ln2, 0)
    w_u = model.unembed.W_U  # type: ignore[attr-defined]
    folded = (w_u.t().float() * norm_weights.pop("ln_final.w").to(w_u.device)[None, :]).to(w_u.dtype)
    model.unembed._parameters["W_U"] = nn.Parameter(folded.t(), requires_grad=w_u.requires_grad)  # type: ignore[attr-defined]


@torch.no_grad()
def center_unembed_weights(model: nn.Module) -> None:
    """Subtract each row's mean over the vocabulary from W_U and b_U (log-probs unchanged, as in TL)."""
    unembed = model.unembed  # type: ignore[attr-defined]
    w_u = unembed.W_U
    if w_u.untyped_storage().data_ptr() == model.embed.W_E.untyped_storage().data_ptr():  # type: ignore[attr-defined]
        # Tied embeddings (W_U is a view of W_E): centre a copy, or the embedding would be centred too.
        centred = w_u - w_u.mean(dim=-1, keepdim=True)
        unembed._parameters["W_U"] = nn.Parameter(centred, requires_grad=w_u.requires_grad)
    else:
        w_u.sub_(w_u.mean(dim=-1, keepdim=True))
    unembed.b_U.sub_(unembed.b_U.mean())


@torch.no_grad()
def load_and_process_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    fold_ln: bool = True,
    center_unembed: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> None:
    """HookedTransformer.load_and_process_state_dict (and so `process_weights_`) for DeepSeek-V3.

    TransformerLens's version swaps the norms for RMSNormPre and then folds their weights into W_Q/W_K/W_V and
    W_in, which MLA/MoE do not have, so the norm weights were silently lost. Here the same exact folds as
    `from_pretrained` (fold_layer_norms, center_unembed_weights); center_writing_weights is skipped for RMSNorm
    and fold_value_biases has nothing to fold (no value biases), as in `load_pretrained`.
    """
    from transformer_lens.components import RMSNormPre

    if refactor_factored_attn_matrices:
        raise ValueError(
            "refactor_factored_attn_matrices is not defined for MLA (queries and keys come from low-rank latents "
            "with a shared rope key, not per-head W_Q/W_K). " + PROCESSING_HELP
        )
    from r1_plugin.models.deepseek_v3.fp8_weights import has_fp8_weights

    if fold_ln and has_fp8_weights(model):
        raise ValueError(
            "process_weights_/load_and_process_state_dict with fold_ln=True on a keep_fp8 model is not supported "
            "(its FP8 weights are stored as in the checkpoint). Load with `HookedTransformer.from_pretrained("
            "..., keep_fp8=True)`, which folds exactly at load, or `from_pretrained_no_processing(..., "
            "keep_fp8=True)`, or pass fold_ln=False."
        )
    cfg: DeepseekV3HookedConfig = model.cfg  # type: ignore[assignment]
    state_dict = dict(state_dict)
    norm_keys = [k for k in state_dict if k.endswith((".ln1.w", ".ln2.w")) or k == "ln_final.w"]
    fold = fold_ln and bool(norm_keys) and cfg.normalization_type in ("RMS", "RMSPre")
    norm_weights = {k: state_dict.pop(k).detach().to(torch.float32).clone() for k in norm_keys} if fold else {}
    if fold and cfg.normalization_type == "RMS":
        cfg.normalization_type = "RMSPre"
        model.ln_final = RMSNormPre(cfg)
        for block in model.blocks:  # type: ignore[attr-defined]
            block.ln1, block.ln2 = RMSNormPre(cfg), RMSNormPre(cfg)
    if "unembed.b_U" not in state_dict and "unembed.b_U" in model.state_dict():
        state_dict["unembed.b_U"] = torch.zeros_like(model.state_dict()["unembed.b_U"])
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit this DeepSeek-V3 model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]} (a state dict whose norms were already folded needs a model built with "
            "normalization_type='RMSPre', or fold_ln=False)."
        )
    if fold:
        fold_layer_norms(model, norm_weights)
    if center_unembed:
        center_unembed_weights(model)
    if fold:
        model.setup()  # type: ignore[operator]  (the norm modules were replaced: rebuild the hook dict)


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
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.HookedTransformer import DTYPE_FROM_STRING

    if refactor_factored_attn_matrices:
        raise ValueError(
            "refactor_factored_attn_matrices is not defined for MLA (queries and keys come from low-rank latents "
            "with a shared rope key, not per-head W_Q/W_K). " + PROCESSING_HELP
        )
    if any(v is not None for v in (checkpoint_index, checkpoint_value, checkpoint_label)):
        raise ValueError(f"{official_name} has no training checkpoints; drop checkpoint_index/checkpoint_value.")
    if hf_model is not None:
        raise ValueError(
            "hf_model is not used for DeepSeek-V3: r1_plugin streams the safetensors shards itself (an HF model "
            "of R1 would need ~1.3 TB of RAM). Pass the model name or checkpoint folder only."
        )
    unknown = sorted(set(from_pretrained_kwargs) - set(_ACCEPTED_KWARGS))
    if unknown:
        raise TypeError(
            f"from_pretrained() got unexpected keyword argument(s) {unknown} for DeepSeek-V3 model {official_name}; "
            "see docs/models-deepseek.md for the accepted arguments (e.g. keep_fp8, n_devices, first_n_layers, "
            "memory_per_device)."
        )
    for key in ("load_in_8bit", "load_in_4bit"):
        if from_pretrained_kwargs.pop(key, False):
            raise ValueError(f"{key} is not supported for DeepSeek-V3; FP8 checkpoints are dequantised to `dtype`.")
    if isinstance(dtype, str):
        dtype = DTYPE_FROM_STRING[dtype]
    dtype = from_pretrained_kwargs.pop("torch_dtype", dtype)
    if center_writing_weights:
        logger.info("center_writing_weights is skipped for RMSNorm models (as TransformerLens does for Llama).")

    files = CheckpointFiles(official_name, from_pretrained_kwargs)
    hf_config = files.config()
    n_hidden = hf_config.get("num_hidden_layers")
    if first_n_layers is not None and not 1 <= first_n_layers <= n_hidden:
        raise ValueError(f"first_n_layers={first_n_layers} must be between 1 and {n_hidden} for {official_name}.")

    cfg = loading.get_pretrained_model_config(
        official_name,
        fold_ln=fold_ln,
        device=device,
        n_devices=n_devices,
        default_prepend_bos=default_prepend_bos,
        dtype=dtype,
        first_n_layers=first_n_layers,
        n_ctx=n_ctx,
        **from_pretrained_kwargs,
    )
    if not isinstance(cfg, DeepseekV3HookedConfig):
        raise TypeError(
            "the DeepSeek-V3 config was not built as DeepseekV3HookedConfig: call `import r1_plugin` "
            "(r1_plugin._patches.tl_deepseek.apply()) before loading."
        )
    cfg.keep_fp8 = bool(keep_fp8) and bool(hf_config.get("quantization_config"))
    from r1_plugin.models.placement import place_model

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
