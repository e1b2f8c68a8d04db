"""transformers' DeepseekV3ForCausalLM built from an R1-format FP8 checkpoint for TransformerBridge, in the
requested dtype: FP8 weights kept e4m3 (`keep_fp8=True`, dequantised on access by the same `Fp8Weight`
parametrization the HookedTransformer path uses) or dequantised once at load; never transformers' silent bf16.

transformers' own FP8 loader ignores the requested dtype off FP8 GPUs ("dequantizing the model to bf16") and on
FP8 GPUs computes with FP8 matmuls and quantised activations, so neither gives the exact float32 dequantisation.
Here the model is built on the meta device and each shard tensor is read once (r1_plugin's shard streaming),
checked (`check_scale_shape`) and written straight to its device; the result is passed to the stock
`TransformerBridge.boot_transformers(hf_model=...)`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn

from r1_plugin.errors import R1PluginError
from r1_plugin.models.deepseek_v3.fp8 import block_size_of, check_scale_shape, dequantize_blockwise, is_fp8
from r1_plugin.models.deepseek_v3.fp8_weights import keep_fp8_weight

_EXPERT_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
SCALE_SUFFIX = "_scale_inv"
ARCHITECTURE = "DeepseekV3ForCausalLM"


class BridgeLoadError(R1PluginError, ValueError):
    """An R1-format checkpoint that cannot be built as a DeepseekV3ForCausalLM for the bridge."""


class TensorMismatchError(BridgeLoadError):
    """A checkpoint tensor that config.json's model cannot take (unknown name, wrong shape): its shard is named."""


def r1_checkpoint(model_name: Any) -> tuple[str, dict[str, Any]] | None:
    """(local folder or hub id, config.json) when `model_name` names a DeepSeek-V3 checkpoint, else None.

    Without TransformerLens's HookedTransformer (this runs on every `boot_transformers` call, under TL 4 too) and
    with transformers' rule for names: an existing folder is the checkpoint (its config.json must say
    DeepseekV3ForCausalLM); otherwise a name r1_plugin's registry maps to DeepSeek-V3 (its config.json from the HF
    cache, downloaded if needed, as the stock boot would).
    """
    from pathlib import Path

    from r1_plugin.models import model_names
    from r1_plugin.models.device_plan import read_config

    if not isinstance(model_name, str):
        return None
    folder = Path(model_name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            return None
        from r1_plugin.models.deepseek_v3.checkpoint_files import CheckpointFiles

        raw = CheckpointFiles(str(folder.absolute()), {}).config()  # a damaged config.json is named, with what to do
        return (str(folder.absolute()), raw) if (raw.get("architectures") or [""])[0] == ARCHITECTURE else None
    spec = model_names.lookup(model_name)
    if spec is None or spec.architecture != ARCHITECTURE:
        return None
    return spec.hf_id, read_config(spec.hf_id)[0]


def fp8_quantization(raw_config: dict[str, Any]) -> dict[str, Any] | None:
    """The config's block-wise FP8 quantization_config, or None for an unquantised checkpoint."""
    quant = raw_config.get("quantization_config") or None
    if quant is None:
        return None
    if quant.get("quant_method") != "fp8":
        raise BridgeLoadError(
            f"quant_method {quant.get('quant_method')!r} is not supported by r1_plugin's bridge loader; it reads "
            "block-wise FP8 (DeepSeek's release format) and unquantised checkpoints."
        )
    return quant


def device_of(name: str, device: torch.device, device_map: dict[str, Any] | None) -> torch.device:
    """Where parameter `name` goes: the longest matching module prefix of an explicit device_map, else `device`."""
    if not device_map:
        return device
    best, target = -1, None
    for prefix, dev in device_map.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, target = len(prefix), dev
    if target is None:
        raise BridgeLoadError(f"device_map places no module containing {name}; map every module (or '').")
    return torch.device(f"cuda:{target}" if isinstance(target, int) else target)


def _fp8_experts_forward(experts: nn.Module) -> None:
    """Give a keep_fp8 expert stack a forward that dequantises each routed expert only when it receives tokens.

    transformers' experts forward reads `self.gate_up_proj[expert]`; on a parametrized stack each read dequantises
    all E experts (R1: 256 x 3 x 2048 x 7168 numbers per layer, ~68 GB of float32 + bf16 transient). This
    forward takes the same steps in the same order as transformers' eager loop (experts in id order, tokens as
    `torch.where` lists them, the same linear / activation / weighting / index_add_), with each used expert
    dequantised alone (`Fp8Weight.dequantize(experts=...)`, the same product): the numbers are bit-identical to the
    dequantise-on-load model (tested) and the transient is one expert.
    """
    from r1_plugin.models.deepseek_v3.fp8_weights import fp8_parts

    gate_up, down = fp8_parts(experts, "gate_up_proj"), fp8_parts(experts, "down_proj")
    if gate_up is None or down is None:
        raise BridgeLoadError(f"{type(experts).__name__}: expected FP8 gate_up_proj and down_proj stacks.")
    n_experts = int(experts.num_experts)  # type: ignore[arg-type]
    act = experts.act_fn

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for expert in torch.unique(top_k_index).tolist():  # the experts that got tokens, as transformers loops
            if expert >= n_experts:
                continue
            top_k_pos, token_idx = torch.where((top_k_index == expert).t())
            ids = torch.tensor([expert], device=hidden_states.device)
            w_gate_up = gate_up[1].dequantize(gate_up[0], experts=ids)[0]
            w_down = down[1].dequantize(down[0], experts=ids)[0]
            gate, up = nn.functional.linear(hidden_states[token_idx], w_gate_up).chunk(2, dim=-1)
            current = nn.functional.linear(act(gate) * up, w_down)
            current = current * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, current.to(out.dtype))
        return out

    experts.forward = forward  # type: ignore[method-assign]


class _Stacks:
    """Routed experts of one layer collected from per-expert checkpoint tensors into transformers' fused layout:
    gate_up_proj [E, 2m, d] (gate rows then up rows) and down_proj [E, d, m]."""

    def __init__(self, n_experts: int) -> None:
        self.n = n_experts
        self.parts: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor | None]]] = defaultdict(dict)

    def add(self, proj: str, expert: int, tensor: torch.Tensor, scale: torch.Tensor | None) -> bool:
        """Keep one expert's tensor; True once every expert of every projection is there."""
        self.parts[proj][expert] = (tensor, scale)
        return all(len(self.parts[p]) == self.n for p in ("gate_proj", "up_proj", "down_proj"))


class BridgeCheckpointLoader:
    """Streams an R1-format checkpoint into a meta-built DeepseekV3ForCausalLM (transformers' parameter names)."""

    def __init__(self, model: nn.Module, raw_config: dict[str, Any], dtype: torch.dtype, keep_fp8: bool,
                 device: torch.device, device_map: dict[str, Any] | None = None) -> None:
        self.model = model
        self.dtype = dtype
        quant = fp8_quantization(raw_config)
        self.keep_fp8 = bool(keep_fp8 and quant)
        self.block = block_size_of((quant or {}).get("weight_block_size", [128, 128]))
        self.device, self.device_map = device, device_map
        self.n_layers = int(raw_config["num_hidden_layers"])
        self.expected = {n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"}
        self.stacks: dict[str, _Stacks] = {}

    def needed(self, key: str) -> bool:
        """Whether checkpoint tensor `key` is part of the model (not a scale, not an MTP layer beyond n_layers)."""
        if key.endswith(SCALE_SUFFIX):
            return False
        match = _LAYER_RE.match(key)
        return match is None or int(match.group(1)) < self.n_layers

    def add(self, key: str, tensor: torch.Tensor, scale: torch.Tensor | None, shard: str) -> None:
        """Store one checkpoint tensor (FP8 with its scale), checked against the block size first."""
        if is_fp8(tensor):
            if scale is None:
                raise BridgeLoadError(f"{key} in {shard} is FP8 but the checkpoint has no {key}{SCALE_SUFFIX}.")
            check_scale_shape(key, tensor.shape, scale.shape, self.block, shard=shard)
        expert = _EXPERT_RE.match(key)
        if expert is not None:
            prefix = expert.group(1)
            experts = self.model.get_submodule(prefix)
            stacks = self.stacks.setdefault(prefix, _Stacks(experts.num_experts))
            if stacks.add(expert.group(3), int(expert.group(2)), tensor, scale):
                self._store_experts(prefix, experts, self.stacks.pop(prefix))
            return
        if key not in self.expected:
            raise TensorMismatchError(
                f"{key} in {shard} is not a parameter of DeepseekV3ForCausalLM for this config.json (or is given "
                "twice): does config.json belong to these weights?"
            )
        module_name, _, attr = key.rpartition(".")
        module = self.model.get_submodule(module_name)
        device = device_of(key, self.device, self.device_map)
        if scale is not None and self.keep_fp8 and attr == "weight":
            keep_fp8_weight(module, attr, _copy(tensor, tensor.dtype, device), _copy(scale, torch.float32, device),
                            self.block, self.dtype, "hf", name=key)
        else:
            value = tensor if scale is None else dequantize_blockwise(tensor, scale, self.block, self.dtype, key)
            keep = torch.float32 if key.endswith("e_score_correction_bias") else self.dtype
            self._assign(module, attr, key, _copy(value, keep, device))
        self.expected.discard(key)

    def _store_experts(self, prefix: str, experts: nn.Module, stacks: _Stacks) -> None:
        """One layer's routed experts as gate_up_proj / down_proj (kept FP8 with per-row scale indices, or not)."""
        device = device_of(prefix + ".gate_up_proj", self.device, self.device_map)
        order = range(stacks.n)
        gate = [stacks.parts["gate_proj"][e] for e in order]
        up = [stacks.parts["up_proj"][e] for e in order]
        down = [stacks.parts["down_proj"][e] for e in order]
        fp8 = gate[0][1] is not None
        if fp8 and self.keep_fp8:
            b0 = self.block[0]
            m = gate[0][0].shape[0]
            gate_up = torch.stack([torch.cat([g[0], u[0]]) for g, u in zip(gate, up, strict=True)])
            scales = torch.stack([torch.cat([g[1], u[1]]) for g, u in zip(gate, up, strict=True)])  # type: ignore[list-item]
            rows = torch.arange(m)
            row_block = torch.cat([rows // b0, -(-m // b0) + rows // b0])  # up's rows use the scale rows after gate's
            keep_fp8_weight(experts, "gate_up_proj", gate_up.to(device), scales.to(device, torch.float32),
                            self.block, self.dtype, "hf", row_block=row_block.to(device), name=prefix + ".gate_up_proj")
            keep_fp8_weight(experts, "down_proj", torch.stack([d[0] for d in down]).to(device),
                            torch.stack([d[1] for d in down]).to(device, torch.float32),  # type: ignore[misc]
                            self.block, self.dtype, "hf", name=prefix + ".down_proj")
            _fp8_experts_forward(experts)
        else:
            def plain(part: tuple[torch.Tensor, torch.Tensor | None], name: str) -> torch.Tensor:
                w, s = part
                return w.to(self.dtype) if s is None else dequantize_blockwise(w, s, self.block, self.dtype, name)

            gate_up = torch.stack([torch.cat([plain(g, f"{prefix}.{e}.gate_proj.weight"),
                                              plain(u, f"{prefix}.{e}.up_proj.weight")])
                                   for e, (g, u) in enumerate(zip(gate, up, strict=True))])
            self._assign(experts, "gate_up_proj", prefix + ".gate_up_proj", gate_up.to(device))
            down_stack = torch.stack([plain(d, f"{prefix}.{e}.down_proj.weight") for e, d in enumerate(down)])
            self._assign(experts, "down_proj", prefix + ".down_proj", down_stack.to(device))
        self.expected -= {prefix + ".gate_up_proj", prefix + ".down_proj"}

    def _assign(self, module: nn.Module, attr: str, key: str, value: torch.Tensor) -> None:
        old = getattr(module, attr)
        if tuple(old.shape) != tuple(value.shape):
            raise TensorMismatchError(f"{key}: checkpoint gives shape {tuple(value.shape)}, config.json needs "
                                  f"{tuple(old.shape)}.")
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[attr] = value

    def finish(self) -> None:
        """Tie or check the unembedding, rebuild the rotary buffers off meta, and refuse anything left unloaded."""
        model: Any = self.model
        if "lm_head.weight" in self.expected and getattr(model.config, "tie_word_embeddings", False):
            model.lm_head.weight = model.model.embed_tokens.weight
            self.expected.discard("lm_head.weight")
        rotary = model.model.rotary_emb
        device = device_of("model.rotary_emb", self.device, self.device_map)
        with torch.device("cpu"):
            model.model.rotary_emb = type(rotary)(model.config).to(device)
        self.expected -= {n for n in self.expected if n.startswith("model.rotary_emb.")}
        if self.stacks or self.expected:
            missing = sorted(self.expected) + [f"{p} (experts incomplete)" for p in self.stacks]
            raise BridgeLoadError(
                f"the checkpoint lacks {len(missing)} tensors of DeepseekV3ForCausalLM, e.g. {missing[:5]}: is the "
                "folder complete (every shard the index names) and does config.json belong to it?"
            )


def _copy(value: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A copy in fresh storage on `device` (never a view of the shard's memory map)."""
    return torch.empty(value.shape, dtype=dtype, device=device).copy_(value)


def _meta_model(raw: dict[str, Any], hf_config_overrides: dict[str, Any] | None) -> Any:
    """DeepseekV3ForCausalLM on the meta device for the checkpoint's config.json `raw` (eager attention and, for
    FP8 checkpoints, eager experts)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config.from_dict({k: v for k, v in raw.items() if k != "quantization_config"})
    for key, value in (hf_config_overrides or {}).items():
        setattr(config, key, value)
    config._attn_implementation = "eager"  # what boot_transformers asks transformers for (hooks need eager)
    # transformers' eager experts loop (not its default grouped_mm, which reads every expert's weights at once):
    # the keep_fp8 forward takes its exact steps expert by expert, so both keep_fp8 settings give the same numbers.
    if fp8_quantization(raw):
        config._experts_implementation = "eager"
    with torch.device("meta"):
        return DeepseekV3ForCausalLM(config)


def _stream_shards(files: Any, loader: BridgeCheckpointLoader, progress: bool) -> None:
    """Read every tensor `loader` needs, shard by shard (each FP8 weight with its scale), into `loader`."""
    import tqdm.auto as tqdm

    from r1_plugin.models.deepseek_v3.checkpoint_files import WEIGHT_DTYPES

    weight_map = files.weight_map()
    by_shard: dict[str, list[str]] = defaultdict(list)
    for key, shard in weight_map.items():
        if loader.needed(key):
            by_shard[shard].append(key)
    files.check_shards_present(sorted(by_shard))  # an incomplete folder is refused before any weight is read
    for shard in tqdm.tqdm(sorted(by_shard), desc="Loading DeepSeek-V3 shards", disable=not progress):
        with files.open(shard) as handle:  # a damaged shard or missing tensor names the shard and the fix
            for key in by_shard[shard]:
                tensor = files.tensor(handle, key, shard)
                if tensor.dtype not in WEIGHT_DTYPES:
                    raise files.damaged(shard, f"stores {key} as {tensor.dtype}, which is not a weight dtype "
                                               "(float32/16/64, bfloat16, FP8)")
                scale = None
                scale_key = key + SCALE_SUFFIX
                if is_fp8(tensor) and scale_key in weight_map:
                    if weight_map[scale_key] == shard:
                        scale = files.tensor(handle, scale_key, shard)
                    else:
                        with files.open(weight_map[scale_key]) as other:
                            scale = files.tensor(other, scale_key, weight_map[scale_key])
                try:
                    loader.add(key, tensor, scale, shard)
                except TensorMismatchError as exc:  # a tensor config.json cannot take: name its shard and the fix
                    raise files.damaged(shard, str(exc).rstrip(".")) from exc
                del tensor, scale


def build_hf_model(
    name_or_folder: str,
    dtype: torch.dtype = torch.float32,
    keep_fp8: bool = False,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    hf_config_overrides: dict[str, Any] | None = None,
    revision: str | None = None,
    progress: bool = False,
) -> Any:
    """DeepseekV3ForCausalLM (eval mode) holding the checkpoint's weights in `dtype` (FP8 kept FP8 with keep_fp8).

    `device_map`: an explicit {module prefix: device} dict (e.g. `r1_plugin.models.device_plan.bridge_device_map`)
    or accelerate's "auto"/"balanced"/"sequential" with `max_memory` (sized at `dtype`, so conservative for
    keep_fp8). Each tensor is written straight to its device; a model on several devices is dispatched with
    accelerate (`hf_device_map` set), as transformers' own `device_map` loading does.
    """
    from r1_plugin.models.deepseek_v3.checkpoint_files import CheckpointFiles

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.itemsize == 1:
        raise BridgeLoadError(f"dtype must be a torch float dtype to compute in (float32, bfloat16, float16), "
                              f"not {dtype!r}.")
    found = r1_checkpoint(name_or_folder)
    if found is None:
        raise BridgeLoadError(f"{name_or_folder!r} is not a DeepSeek-V3/R1 checkpoint (folder or known hub id).")
    files = CheckpointFiles(found[0], {} if revision is None else {"revision": revision})
    raw = files.config()
    from r1_plugin.models.deepseek_v3.config_checks import validate_config

    validate_config(raw, where=found[0])  # the same config checks as the HookedTransformer path
    model = _meta_model(raw, hf_config_overrides)
    model.eval()
    if isinstance(device_map, str):
        from accelerate import infer_auto_device_map

        device_map = infer_auto_device_map(model, max_memory=max_memory, dtype=dtype,
                                           no_split_module_classes=model._no_split_modules)
    target = torch.device(device) if device is not None else torch.device("cpu")
    loader = BridgeCheckpointLoader(model, raw, dtype, keep_fp8, target, device_map)
    _stream_shards(files, loader, progress)
    loader.finish()
    if device_map:
        devices = {str(device_of(name, target, device_map)) for name, _ in model.named_parameters()}
        if len(devices) > 1:
            from accelerate import dispatch_model

            dispatch_model(model, device_map=device_map)  # hooks move activations between devices; sets hf_device_map
        else:
            model.hf_device_map = dict(device_map)
    return model
