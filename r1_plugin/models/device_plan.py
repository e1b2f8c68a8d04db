"""Byte-balanced placement of a DeepSeek-V3/R1 model over devices, computed from config.json alone.

TransformerLens splits blocks by count; R1's embedding, 3 dense layers, 58 MoE layers and unembedding differ a
lot in size. `plan_devices` sizes every tensor the loader would create (same shapes and dtypes, FP8 kept or not)
with plain Python (no torch, no weights), adds the KV cache, an activation allowance and the FP8
dequantisation transient, and splits the blocks into contiguous runs that minimise the largest device.

Two backends (`BACKENDS`), which differ most in the KV cache: r1_plugin's HookedTransformer ("hooked") caches
MLA's latent, kv_lora_rank + qk_rope_head_dim numbers per token per layer (R1: 576); TransformerBridge ("bridge")
runs its own attention and caches per-head K and V, n_heads x (qk_head_dim + v_head_dim) (R1: 128 x 320 = 40,960,
71x as many). `bridge_device_map(plan)` turns a bridge plan into `boot_transformers(device_map=...)`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("hooked", "bridge")
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
# Reserved on every device for the CUDA context, cuBLAS workspaces and allocator fragmentation.
DEVICE_RESERVE_BYTES = 2 * 2**30
GB = 10**9


def parse_bytes(value: int | float | str) -> int:
    """Bytes from an int or a string such as "141GB", "80GiB", "512 MiB" (GB = 10^9, GiB = 2^30)."""
    if isinstance(value, bool):
        raise TypeError("memory_per_device must be a number of bytes or a string like '141GB' or '80GiB'.")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory_per_device must be positive, got {value}.")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read memory size {value!r}: use bytes (an int) or a number with a unit, e.g. '141GB', "
            "'80GiB', '512MiB' (GB = 10^9 bytes, GiB = 2^30)."
        )
    return int(float(match.group(1)) * _UNITS[unit])


def dtype_name(dtype: Any) -> str:
    """'bfloat16' from 'bfloat16', 'torch.bfloat16' or torch.bfloat16 (no torch import needed)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}.")
    return name


def read_config(name_or_config: Any) -> tuple[dict[str, Any], str]:
    """(config.json dict, label) from a dict, a config.json path, a checkpoint folder or a hub id/alias (cached)."""
    if isinstance(name_or_config, dict):
        return dict(name_or_config), str(name_or_config.get("_name_or_path") or "config")
    if not isinstance(name_or_config, (str, Path)):
        raise TypeError("name_or_config must be a model name, a checkpoint folder, a config.json path or a dict.")
    path = Path(name_or_config).expanduser()
    if path.is_file():
        return json.loads(path.read_text()), str(name_or_config)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json.")
        return json.loads((path / "config.json").read_text()), str(name_or_config)
    from r1_plugin.models import model_names

    spec = model_names.lookup(str(name_or_config))
    repo = spec.hf_id if spec is not None else str(name_or_config)
    from huggingface_hub import hf_hub_download

    from r1_plugin.errors import missing_from_cache

    with missing_from_cache(repo, "config.json"):
        config_path = hf_hub_download(repo, "config.json")
    return json.loads(Path(config_path).read_text()), repo


@dataclass
class ModelBytes:
    """Bytes of the embedding, each block, the final norm + unembedding and per-block figures, for one setting."""

    embed: int
    blocks: list[int]
    unembed: int
    kv_cache: list[int]  # per block, for batch x kv_cache_tokens
    fp8_transient: list[int]  # per block: largest dequantisation transient of a forward
    activations: int  # per device: the stated activation allowance
    logits: int  # on the last device


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    return default if value is None else value


@dataclass(frozen=True)
class _Sizes:
    """The config's dimensions and the storage of one element, as model_bytes' helpers need them."""

    d: int
    h: int
    vocab: int
    nope: int
    rope: int
    v: int
    r: int
    q_lora: int | None
    d_dense: int  # intermediate_size of the dense MLP layers
    m: int  # moe_intermediate_size
    n_exp: int
    n_shared: int
    topk: int
    isz: int  # bytes per element in `dtype`
    fp8: bool  # FP8 weights kept as e4m3 + float32 block scales
    block: tuple[int, int]

    @classmethod
    def of(cls, config: dict[str, Any], isz: int, fp8: bool, block: tuple[int, int]) -> _Sizes:
        """The sizes of `config` (an HF config.json dict)."""
        return cls(
            d=config["hidden_size"], h=config["num_attention_heads"], vocab=config["vocab_size"],
            nope=config["qk_nope_head_dim"], rope=config["qk_rope_head_dim"], v=config["v_head_dim"],
            r=config["kv_lora_rank"], q_lora=config.get("q_lora_rank"), d_dense=config["intermediate_size"],
            m=config["moe_intermediate_size"], n_exp=config["n_routed_experts"],
            n_shared=_get(config, "n_shared_experts", 0), topk=config["num_experts_per_tok"], isz=isz, fp8=fp8,
            block=block,
        )

    def linear(self, rows: int, cols: int, kept_rows: int | None = None) -> int:
        """A checkpoint linear weight [rows, cols] (or `kept_rows` of its rows), FP8 kept or in `dtype`."""
        if not self.fp8:
            return (kept_rows or rows) * cols * self.isz
        scales = math.ceil(rows / self.block[0]) * math.ceil(cols / self.block[1]) * 4
        if kept_rows is None:
            return rows * cols + scales
        return kept_rows * cols + scales + kept_rows * 8  # + the int64 row -> scale-row index

    def dequant_transient(self, rows: int, cols: int) -> int:
        """Bytes of the float32 + `dtype` copies made while dequantising one FP8 weight [rows, cols] (0 unless FP8)."""
        return rows * cols * (4 + self.isz) if self.fp8 else 0


def _attention_bytes(z: _Sizes, config: dict[str, Any], bridge: bool) -> tuple[int, int]:
    """(bytes of one MLA block's attention weights and norms, its largest dequantisation transient)."""
    d, h, r, rope, nope, v, q_lora, isz = z.d, z.h, z.r, z.rope, z.nope, z.v, z.q_lora, z.isz
    qk = nope + rope
    attn = 2 * d * isz + r * isz  # ln1, ln2, kv_a_norm
    largest = [(r + rope, d), (d, h * v), (h * (nope + v), r)]
    if q_lora:
        attn += z.linear(q_lora, d) + q_lora * isz + z.linear(h * qk, q_lora)
        largest += [(q_lora, d), (h * qk, q_lora)]
    else:
        attn += z.linear(h * qk, d)
        largest.append((h * qk, d))
    if bridge:  # kv_b_proj kept whole (transformers' layout)
        attn += z.linear(r + rope, d) + z.linear(h * (nope + v), r)
    else:  # split into W_K_b / W_V_b rows
        attn += z.linear(r + rope, d) + z.linear(h * (nope + v), r, h * nope) + z.linear(h * (nope + v), r, h * v)
    attn += z.linear(d, h * v)
    if config.get("attention_bias"):
        attn += ((q_lora or 0) + r + rope + d) * isz
    return attn, max(z.dequant_transient(a, b) for a, b in largest)


def _moe_bytes(z: _Sizes, bridge: bool, fp8_experts_per_chunk: int) -> tuple[int, int]:
    """(bytes of one MoE layer's router, routed and shared experts, its expert dequantisation transient)."""
    d, m, n_exp, isz = z.d, z.m, z.n_exp, z.isz
    shared = 3 * z.linear(m * z.n_shared, d) if z.n_shared else 0
    experts = 3 * n_exp * z.linear(m, d)
    if bridge:  # router weight in dtype; FP8 gate_up stack: + an int64 scale-row index of its 2m rows
        moe = d * n_exp * isz + n_exp * 4 + experts + shared + (2 * m * 8 if z.fp8 else 0)
    else:
        moe = d * n_exp * 4 + n_exp * 4 + experts + shared  # router weight and correction bias in float32
    chunk = 1 if bridge else min(fp8_experts_per_chunk, n_exp)  # the bridge dequantises one used expert at a time
    moe_transient = (chunk * 3 * d * m * (4 + isz) if bridge else chunk * d * m * (3 * isz + 5)) if z.fp8 else 0
    return moe, moe_transient


def _activation_bytes(z: _Sizes, kv_cache_tokens: int, batch: int) -> int:
    """The activation allowance of one device for `batch` x max(kv_cache_tokens, 1) tokens."""
    t = max(kv_cache_tokens, 1)
    a = batch * t
    d_mlp_max = max(z.d_dense, z.topk * z.m + z.m * z.n_shared)
    qk = z.nope + z.rope
    per_token = z.isz * (8 * z.d + 3 * z.h * qk + 2 * z.h * z.v + 2 * (z.r + z.rope) + (z.q_lora or 0)
                         + 3 * d_mlp_max)
    return a * per_token + batch * z.h * t * t * (4 + 2 * z.isz) + DEVICE_RESERVE_BYTES


def model_bytes(
    config: dict[str, Any],
    dtype: str = "bfloat16",
    keep_fp8: bool = False,
    first_n_layers: int | None = None,
    kv_cache_tokens: int = 0,
    batch: int = 1,
    fp8_experts_per_chunk: int = 16,
    backend: str = "hooked",
) -> ModelBytes:
    """Size every tensor the loader creates for `config`: as from_pretrained_no_processing stores it ("hooked"), or
    as r1_plugin's bridge loader builds transformers' DeepseekV3ForCausalLM for TransformerBridge ("bridge")."""
    from r1_plugin.models.fp8_blocks import block_size_of

    check_backend(backend)
    bridge = backend == "bridge"
    isz = DTYPE_BYTES[dtype_name(dtype)]
    quant = config.get("quantization_config") or {}
    fp8 = bool(keep_fp8 and quant.get("quant_method") == "fp8")
    block = block_size_of(quant.get("weight_block_size") or [128, 128]) if fp8 else (128, 128)
    z = _Sizes.of(config, isz, fp8, block)
    n_layers = config["num_hidden_layers"] if first_n_layers is None else first_n_layers
    dense_k = _get(config, "first_k_dense_replace", 0)
    attn, attn_transient = _attention_bytes(z, config, bridge)
    dense_mlp = 3 * z.linear(z.d_dense, z.d)
    moe, moe_transient = _moe_bytes(z, bridge, fp8_experts_per_chunk)
    blocks, transients = [], []
    for i in range(n_layers):
        if i < dense_k:
            blocks.append(attn + dense_mlp)
            transients.append(max(attn_transient, z.dequant_transient(z.d_dense, z.d)))
        else:
            blocks.append(attn + moe)
            transients.append(max(attn_transient, moe_transient, z.dequant_transient(z.m * z.n_shared, z.d)))
    kv = [batch * kv_cache_tokens * kv_numbers_per_token(config, backend) * isz] * n_layers
    a = batch * max(kv_cache_tokens, 1)
    d, vocab = z.d, z.vocab
    return ModelBytes(
        embed=vocab * d * isz,
        blocks=blocks,
        unembed=d * vocab * isz + vocab * isz + d * isz,  # W_U (lm_head), b_U (the bridge adds one too), final norm
        kv_cache=kv,
        fp8_transient=transients,
        activations=_activation_bytes(z, kv_cache_tokens, batch),
        logits=2 * a * vocab * 4,  # float32 logits and one log-softmax/sampling copy
    )


def check_backend(backend: str) -> None:
    """Refuse a backend name that is not one of BACKENDS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (HookedTransformer or TransformerBridge), not {backend!r}.")


def kv_numbers_per_token(config: dict[str, Any], backend: str = "hooked") -> int:
    """Numbers the KV cache keeps per token per layer: MLA's latent ("hooked") or per-head K and V ("bridge")."""
    check_backend(backend)
    if backend == "bridge":
        h = config["num_attention_heads"]
        return h * (config["qk_nope_head_dim"] + config["qk_rope_head_dim"] + config["v_head_dim"])
    return config["kv_lora_rank"] + config["qk_rope_head_dim"]


def balanced_split(sizes: list[int], n_devices: int) -> list[int]:
    """Device of each item: contiguous runs over `n_devices` minimising the largest run's total (exact DP)."""
    n = len(sizes)
    k = max(1, min(n_devices, n))
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[j][i]: smallest max-run total splitting the first i items into j runs; cut[j][i]: start of the last run.
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for s in range(j - 1, i):
                cost = max(best[j - 1][s], prefix[i] - prefix[s])
                if cost < best[j][i]:
                    best[j][i], cut[j][i] = cost, s
    devices = [0] * n
    i = n
    for j in range(k, 0, -1):
        s = cut[j][i]
        for item in range(s, i):
            devices[item] = j - 1
        i = s
    return devices


@dataclass
class DeviceUsage:
    """One device's share: which blocks, and its bytes by kind."""

    index: int
    blocks: list[int]
    weights: int
    kv_cache: int
    activations: int
    fp8_transient: int
    capacity: int

    @property
    def total(self) -> int:
        """Bytes this device needs at peak."""
        return self.weights + self.kv_cache + self.activations + self.fp8_transient

    @property
    def free(self) -> int:
        """Capacity left (negative: overflow)."""
        return self.capacity - self.total


@dataclass
class DevicePlan:
    """Where each block goes and what each device holds; `.fits` says whether every device has room."""

    model: str
    n_devices: int
    memory_per_device: int
    dtype: str
    keep_fp8: bool
    n_layers: int
    kv_cache_tokens: int
    batch: int
    block_devices: list[int]
    devices: list[DeviceUsage]
    suggestions: list[str] = field(default_factory=list)
    backend: str = "hooked"

    @property
    def fits(self) -> bool:
        """Whether every device's total fits memory_per_device."""
        return all(dev.free >= 0 for dev in self.devices)

    @property
    def total_weights(self) -> int:
        """Weight bytes over all devices."""
        return sum(dev.weights for dev in self.devices)

    def overflowing(self) -> list[DeviceUsage]:
        """Devices whose total exceeds memory_per_device."""
        return [dev for dev in self.devices if dev.free < 0]

    def message(self) -> str:
        """Why the model does not fit, and what would (or that it fits)."""
        if self.fits:
            return f"{self.model} fits on {self.n_devices} x {self.memory_per_device / GB:.1f} GB."
        worst = min(self.devices, key=lambda dev: dev.free)
        over = ", ".join(f"device {dev.index} by {-dev.free / GB:.1f} GB" for dev in self.overflowing())
        text = (
            f"{self.model} ({self.n_layers} layers, {self.dtype}, keep_fp8={self.keep_fp8}, backend {self.backend}) "
            "does not fit "
            f"{self.n_devices} x {self.memory_per_device / GB:.1f} GB: device {worst.index} needs "
            f"{worst.total / GB:.1f} GB (overflows: {over})."
        )
        if self.suggestions:
            text += " Would fit: " + "; ".join(self.suggestions) + "."
        return text

    def table(self) -> str:
        """A text table: one row per device, bytes in GB."""
        head = f"{'device':>6} {'blocks':>9} {'weights':>9} {'kv cache':>9} {'activ.':>8} {'fp8 tmp':>8} {'total':>8} {'free':>8}"
        lines = [
            f"{self.model}: {self.n_layers} layers, {self.dtype}, keep_fp8={self.keep_fp8}, backend {self.backend} "
            f"({'per-head K/V' if self.backend == 'bridge' else 'latent'} cache), "
            f"kv cache {self.batch} x {self.kv_cache_tokens} tokens, {self.n_devices} x "
            f"{self.memory_per_device / GB:.1f} GB (GB = 1e9 bytes)",
            head,
        ]
        for dev in self.devices:
            span = f"{dev.blocks[0]}-{dev.blocks[-1]}" if dev.blocks else "-"
            lines.append(
                f"{dev.index:>6} {span:>9} {dev.weights / GB:>9.2f} {dev.kv_cache / GB:>9.2f} "
                f"{dev.activations / GB:>8.2f} {dev.fp8_transient / GB:>8.2f} {dev.total / GB:>8.2f} "
                f"{dev.free / GB:>8.2f}"
            )
        lines.append(f"weights in all: {self.total_weights / GB:.1f} GB; fits: {'yes' if self.fits else 'NO'}")
        if not self.fits:
            lines.append(self.message())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _plan(
    config: dict[str, Any], label: str, n_devices: int, memory: int, dtype: str, keep_fp8: bool,
    first_n_layers: int | None, kv_cache_tokens: int, batch: int, backend: str = "hooked",
) -> DevicePlan:
    sizes = model_bytes(config, dtype, keep_fp8, first_n_layers, kv_cache_tokens, batch, backend=backend)
    n = len(sizes.blocks)
    items = [b + kv for b, kv in zip(sizes.blocks, sizes.kv_cache)]
    items[0] += sizes.embed
    items[-1] += sizes.unembed + sizes.logits
    block_devices = balanced_split(items, n_devices)
    devices = []
    for j in range(n_devices):
        mine = [i for i in range(n) if block_devices[i] == j]
        weights = sum(sizes.blocks[i] for i in mine)
        weights += (sizes.embed if 0 in mine else 0) + (sizes.unembed if n - 1 in mine else 0)
        activations = (sizes.activations + (sizes.logits if n - 1 in mine else 0)) if mine else 0
        devices.append(DeviceUsage(
            index=j, blocks=mine, weights=weights, kv_cache=sum(sizes.kv_cache[i] for i in mine),
            activations=activations, fp8_transient=max((sizes.fp8_transient[i] for i in mine), default=0),
            capacity=memory,
        ))
    quant = (config.get("quantization_config") or {}).get("quant_method") == "fp8"
    return DevicePlan(label, n_devices, memory, dtype, bool(keep_fp8 and quant), n, kv_cache_tokens, batch,
                      block_devices, devices, backend=backend)


def plan_devices(
    name_or_config: Any,
    n_devices: int,
    memory_per_device: int | str,
    dtype: Any = "bfloat16",
    keep_fp8: bool = False,
    first_n_layers: int | None = None,
    kv_cache_tokens: int = 0,
    batch: int = 1,
    backend: str = "hooked",
) -> DevicePlan:
    """Plan a DeepSeek-V3/R1 model over `n_devices` of `memory_per_device` each, from config.json alone.

    Per device: weights (blocks split by bytes; the embedding goes with block 0, final norm and unembedding with
    the last block, as TransformerLens's forward needs), the latent KV cache for `batch` x `kv_cache_tokens`, an
    activation allowance (a forward over batch x max(kv_cache_tokens, 1) tokens: per-token working set of one
    layer, eager attention scores and pattern, float32 logits on the last device, plus a 2 GiB reserve) and, with
    keep_fp8, the largest dequantisation transient of one of its layers. `print(plan)` shows the table.

    `backend="bridge"` sizes TransformerBridge instead (transformers' module layout, per-head K/V cache: 71x
    the latent cache for R1); `bridge_device_map(plan)` is the matching `boot_transformers(device_map=...)`.
    """
    check_backend(backend)
    config, label = read_config(name_or_config)
    if config.get("architectures", ["DeepseekV3ForCausalLM"])[0] != "DeepseekV3ForCausalLM":
        raise ValueError(f"{label}: plan_devices sizes DeepSeek-V3/R1 checkpoints (DeepseekV3ForCausalLM).")
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}.")
    n_hidden = config["num_hidden_layers"]
    if first_n_layers is not None and not 1 <= first_n_layers <= n_hidden:
        raise ValueError(f"first_n_layers={first_n_layers} must be between 1 and {n_hidden}.")
    if kv_cache_tokens < 0 or batch < 1:
        raise ValueError("kv_cache_tokens must be >= 0 and batch >= 1.")
    memory, dtype = parse_bytes(memory_per_device), dtype_name(dtype)
    args = (kv_cache_tokens, batch, backend)
    plan = _plan(config, label, n_devices, memory, dtype, keep_fp8, first_n_layers, *args)
    if not plan.fits:
        quant = (config.get("quantization_config") or {}).get("quant_method") == "fp8"
        if quant and not keep_fp8 and _plan(config, label, n_devices, memory, dtype, True, first_n_layers, *args).fits:
            plan.suggestions.append("keep_fp8=True")
        layers = first_n_layers or n_hidden
        fitting = [k for k in range(layers - 1, 0, -1)
                   if _plan(config, label, n_devices, memory, dtype, keep_fp8, k, *args).fits]
        if fitting:
            plan.suggestions.append(f"first_n_layers={fitting[0]}")
        for more in range(n_devices + 1, min(layers, 2 * n_devices + 8) + 1):
            if _plan(config, label, more, memory, dtype, keep_fp8, first_n_layers, *args).fits:
                plan.suggestions.append(f"n_devices={more}")
                break
        if batch > 1 and _plan(config, label, n_devices, memory, dtype, keep_fp8, first_n_layers,
                               kv_cache_tokens, 1, backend).fits:
            plan.suggestions.append("batch=1 (one sequence per forward)")
        if not plan.suggestions:
            plan.suggestions.append("fewer kv_cache_tokens or a smaller batch, or larger devices")
    return plan


def bridge_device_map(plan: DevicePlan) -> dict[str, int]:
    """`TransformerBridge.boot_transformers(device_map=...)` for a bridge plan: each decoder layer on its planned
    device, the embedding and rotary table with layer 0, the final norm and lm_head with the last layer."""
    if plan.backend != "bridge":
        raise ValueError("bridge_device_map needs a plan made with backend='bridge' (transformers' layout and cache).")
    first, last = plan.block_devices[0], plan.block_devices[-1]
    device_map = {"model.embed_tokens": first, "model.rotary_emb": first}
    device_map.update({f"model.layers.{i}": dev for i, dev in enumerate(plan.block_devices)})
    device_map.update({"model.norm": last, "lm_head": last})
    return device_map


def block_device(index: int, cfg: Any, device: Any = None) -> Any:
    """The torch device of block `index`: cfg.device_plan's when the config carries one, else TL's split."""
    import torch
    from transformer_lens.utilities.multi_gpu import get_device_for_block_index

    plan = getattr(cfg, "device_plan", None)
    if not plan:
        return get_device_for_block_index(index, cfg, device)
    dev = torch.device(device if device is not None else cfg.device)
    if dev.type == "cpu":
        return dev
    return torch.device(dev.type, (dev.index or 0) + plan[index])


def place_model(
    cfg: Any, hf_config: dict[str, Any], name: str, memory_per_device: int | str | None
) -> DevicePlan | None:
    """from_pretrained's check before reading weights: plan the model; raise ModelDoesNotFitError if it cannot fit.

    Sets cfg.device_plan (byte-balanced blocks) when n_devices > 1. Memory per device: `memory_per_device`, else
    the accelerator's total memory; on the CPU without `memory_per_device` nothing is checked.
    """
    import torch

    from r1_plugin.errors import ModelDoesNotFitError

    device = torch.device(cfg.device) if cfg.device is not None else torch.device("cpu")
    if memory_per_device is None and device.type == "cuda" and torch.cuda.is_available():
        memory_per_device = torch.cuda.get_device_properties(device.index or 0).total_memory
    if memory_per_device is None and cfg.n_devices <= 1:
        return None
    plan = plan_devices(
        hf_config, cfg.n_devices, memory_per_device if memory_per_device is not None else 2**62,
        str(cfg.dtype), keep_fp8=bool(getattr(cfg, "keep_fp8", False)), first_n_layers=cfg.n_layers,
    )
    plan.model = name
    if memory_per_device is not None and not plan.fits:
        error = ModelDoesNotFitError(plan.message() + " (`r1-plugin models plan` prints the table.)")
        error.plan = plan  # type: ignore[attr-defined]
        raise error
    if cfg.n_devices > 1:
        cfg.device_plan = list(plan.block_devices)
    return plan
