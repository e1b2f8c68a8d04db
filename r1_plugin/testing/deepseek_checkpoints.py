"""Tiny random DeepSeek-V3 checkpoints in the published on-disk layout, written into the HF cache for tests."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from r1_plugin.models.deepseek_v3.fp8 import quantize_blockwise

# Linear weights DeepSeek ships in FP8 (block-wise e4m3 + weight_scale_inv); embeddings, lm_head, norms, the
# router and its correction bias stay in bf16/fp32.
_FP8_SUFFIXES = (
    "q_a_proj.weight", "q_b_proj.weight", "q_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
    "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
)


@functools.lru_cache(maxsize=4)
def tokenizer_files(family: str = "r1") -> dict[str, bytes]:
    """The test tokenizer's files (built once per process)."""
    from r1_plugin.testing.tokenizers import build_tokenizer_files

    return build_tokenizer_files(family=family)


@functools.lru_cache(maxsize=4)
def tokenizer_vocab_size(family: str = "r1") -> int:
    """len(tokenizer) of the test tokenizer: the smallest vocab_size a tiny model can use with it."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in tokenizer_files(family).items():
            (Path(tmp) / name).write_bytes(data)
        return len(AutoTokenizer.from_pretrained(tmp))


# The benchmarks' reference DeepSeek-V3 dims (d_model 512, 4 layers, 32 experts top-4): `tiny_config(**BENCH_DIMS)`,
# one definition for every benchmark that compares against transformers (bench_deepseek, bench_bridge).
BENCH_DIMS: dict[str, Any] = dict(
    hidden_size=512, num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
    q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    intermediate_size=1536, moe_intermediate_size=256, n_routed_experts=32, num_experts_per_tok=4,
    n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5,
)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """An HF config.json dict with R1's published keys and tiny dims (q-LoRA, 2 groups, 1 dense layer)."""
    config: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "kv_lora_rank": 20,
        "max_position_embeddings": 2048,
        "moe_intermediate_size": 24,
        "moe_layer_freq": 1,
        "n_group": 2,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 3,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 0,
        "q_lora_rank": 24,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": 12,
        "vocab_size": tokenizer_vocab_size("r1"),
    }
    config.update(overrides)
    return config


YARN = {
    "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
    "original_max_position_embeddings": 64, "type": "yarn",
}


def random_published_weights(config: dict[str, Any], seed: int = 0, std: float = 0.15) -> dict[str, torch.Tensor]:
    """float32 tensors under the published names (per-expert keys), scaled so routing and attention vary."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, s: float = std) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    def norm(n: int) -> torch.Tensor:
        return 1.0 + rnd(n, s=0.2)

    d, h, v = config["hidden_size"], config["num_attention_heads"], config["v_head_dim"]
    nope, rope, r = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["kv_lora_rank"]
    qk, q_lora, m = nope + rope, config["q_lora_rank"], config["moe_intermediate_size"]
    e, bias = config["n_routed_experts"], config["attention_bias"]
    out = {
        "model.embed_tokens.weight": rnd(config["vocab_size"], d, s=1.0),
        "model.norm.weight": norm(d),
        "lm_head.weight": rnd(config["vocab_size"], d),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm(d)
        out[p + "post_attention_layernorm.weight"] = norm(d)
        a = p + "self_attn."
        if q_lora is None:
            out[a + "q_proj.weight"] = rnd(h * qk, d)
        else:
            out[a + "q_a_proj.weight"] = rnd(q_lora, d)
            out[a + "q_a_layernorm.weight"] = norm(q_lora)
            out[a + "q_b_proj.weight"] = rnd(h * qk, q_lora)
            if bias:
                out[a + "q_a_proj.bias"] = rnd(q_lora)
        out[a + "kv_a_proj_with_mqa.weight"] = rnd(r + rope, d)
        out[a + "kv_a_layernorm.weight"] = norm(r)
        out[a + "kv_b_proj.weight"] = rnd(h * (nope + v), r)
        out[a + "o_proj.weight"] = rnd(d, h * v)
        if bias:
            out[a + "kv_a_proj_with_mqa.bias"] = rnd(r + rope)
            out[a + "o_proj.bias"] = rnd(d)
        if i < config["first_k_dense_replace"]:
            for name, shape in (("gate_proj", (config["intermediate_size"], d)), ("up_proj", (config["intermediate_size"], d)),
                                ("down_proj", (d, config["intermediate_size"]))):
                out[p + f"mlp.{name}.weight"] = rnd(*shape)
            continue
        out[p + "mlp.gate.weight"] = rnd(e, d, s=0.5)
        out[p + "mlp.gate.e_score_correction_bias"] = rnd(e, s=0.1)
        for j in range(e):
            out[p + f"mlp.experts.{j}.gate_proj.weight"] = rnd(m, d)
            out[p + f"mlp.experts.{j}.up_proj.weight"] = rnd(m, d)
            out[p + f"mlp.experts.{j}.down_proj.weight"] = rnd(d, m)
        shared = m * config["n_shared_experts"]
        if shared:
            out[p + "mlp.shared_experts.gate_proj.weight"] = rnd(shared, d)
            out[p + "mlp.shared_experts.up_proj.weight"] = rnd(shared, d)
            out[p + "mlp.shared_experts.down_proj.weight"] = rnd(d, shared)
    return out


def to_fp8(tensors: dict[str, torch.Tensor], block_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Quantise the linear weights DeepSeek ships in FP8; adds `<name>_scale_inv` next to each."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.startswith("model.layers.") and name.endswith(_FP8_SUFFIXES) and ".mlp.gate." not in name:
            q, scale_inv = quantize_blockwise(tensor, block_size)
            out[name], out[name + "_scale_inv"] = q, scale_inv
        else:
            out[name] = tensor
    return out


def _layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else (-1 if "embed" in name else 10**9)


def shard_files(tensors: dict[str, torch.Tensor], n_shards: int) -> dict[str, bytes]:
    """safetensors shards (split in layer order, each weight with its scale) plus model.safetensors.index.json."""
    from safetensors.torch import save

    names = sorted(tensors, key=lambda n: (_layer_of(n), n))
    groups = [names[i * len(names) // n_shards : (i + 1) * len(names) // n_shards] for i in range(n_shards)]
    for i in range(n_shards - 1):  # keep each weight_scale_inv in its weight's shard
        while groups[i + 1] and groups[i + 1][0].endswith("_scale_inv"):
            groups[i].append(groups[i + 1].pop(0))
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        files[fname] = save({n: tensors[n].contiguous() for n in group}, metadata={"format": "pt"})
        weight_map.update({n: fname for n in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    return files  # type: ignore[return-value]


@dataclass
class TinyCheckpoint:
    """A written checkpoint: where it is and exactly what tensors it holds."""

    repo_id: str
    snapshot: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]  # as stored (fp8 weights with their scale_inv when fp8)
    files: dict[str, Any] = field(default_factory=dict)


def write_tiny_checkpoint(
    repo_id: str = "deepseek-ai/DeepSeek-R1",
    config: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    storage: str = "float32",
    n_shards: int = 1,
    block_size: tuple[int, int] = (16, 16),
    folder: Path | None = None,
) -> TinyCheckpoint:
    """Write a tiny random checkpoint (float32, bfloat16 or fp8) under `repo_id` in the HF cache, or into `folder`."""
    from r1_plugin.testing.hub import write_hf_repo

    config = dict(config or tiny_config())
    tensors = random_published_weights(config, seed)
    if storage == "bfloat16":
        tensors = {k: v if "e_score_correction_bias" in k else v.to(torch.bfloat16) for k, v in tensors.items()}
    elif storage == "fp8":
        tensors = to_fp8({k: v if "e_score_correction_bias" in k else v.to(torch.bfloat16).float()
                          for k, v in tensors.items()}, block_size)
        tensors = {k: v.to(torch.bfloat16) if v.dtype == torch.float32 and not k.endswith(("_scale_inv", "correction_bias"))
                   else v for k, v in tensors.items()}
        config["quantization_config"] = {
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block_size),
        }
    elif storage != "float32":
        raise ValueError(f"storage must be float32, bfloat16 or fp8, not {storage!r}")
    files: dict[str, Any] = {"config.json": json.dumps(config, indent=2), **tokenizer_files("r1")}
    if n_shards == 1:
        from safetensors.torch import save

        files["model.safetensors"] = save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    else:
        files.update(shard_files(tensors, n_shards))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
        snapshot = folder
    else:
        snapshot = write_hf_repo(repo_id, files)
    return TinyCheckpoint(repo_id, snapshot, config, tensors, files)


def hf_state_dict(published: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Published float tensors -> transformers 5.23 DeepseekV3ForCausalLM state dict (experts fused per layer)."""
    out = {k: v for k, v in published.items() if ".mlp.experts." not in k}
    for i in range(config["first_k_dense_replace"], config["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts."
        e = range(config["n_routed_experts"])
        gate_up = [torch.cat([published[p + f"{j}.gate_proj.weight"], published[p + f"{j}.up_proj.weight"]]) for j in e]
        out[p + "gate_up_proj"] = torch.stack(gate_up)
        out[p + "down_proj"] = torch.stack([published[p + f"{j}.down_proj.weight"] for j in e])
    return out


def hf_reference_model(config: dict[str, Any], float_tensors: dict[str, torch.Tensor]) -> Any:
    """transformers' DeepseekV3ForCausalLM (float32, eager attention) holding `float_tensors` (published names)."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    hf_cfg = DeepseekV3Config(**{k: v for k, v in config.items() if k not in ("quantization_config", "architectures")})
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(hf_cfg).float().eval()
    state = {k: v.float() for k, v in hf_state_dict(float_tensors, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise ValueError(f"reference model mismatch: missing={missing}, unexpected={unexpected}")
    return model


def checkpoint_bytes(files: dict[str, Any]) -> int:
    """Total size of the written files."""
    return sum(len(v.encode() if isinstance(v, str) else v) for v in files.values())


__all__ = [
    "DAMAGES", "TinyCheckpoint", "YARN", "checkpoint_bytes", "damage_checkpoint", "hf_reference_model", "hf_state_dict", "published_tensor_specs",
    "random_fp8_model", "random_published_weights", "tiny_config", "to_fp8", "write_tiny_checkpoint",
]


def published_tensor_specs(config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(published name, shape, kind) of every tensor of a DeepseekV3 checkpoint, in layer order, without data.

    kind: "linear" (shipped FP8 in R1), "norm", "embed", "lm_head", "router", "router_bias" or "bias".
    """
    d, h, v = config["hidden_size"], config["num_attention_heads"], config["v_head_dim"]
    nope, rope, r = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["kv_lora_rank"]
    qk, q_lora, m = nope + rope, config.get("q_lora_rank"), config["moe_intermediate_size"]
    e, bias = config["n_routed_experts"], config.get("attention_bias", False)
    yield "model.embed_tokens.weight", (config["vocab_size"], d), "embed"
    for i in range(config["num_hidden_layers"]):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        yield p + "input_layernorm.weight", (d,), "norm"
        yield p + "post_attention_layernorm.weight", (d,), "norm"
        if q_lora is None:
            yield a + "q_proj.weight", (h * qk, d), "linear"
        else:
            yield a + "q_a_proj.weight", (q_lora, d), "linear"
            yield a + "q_a_layernorm.weight", (q_lora,), "norm"
            yield a + "q_b_proj.weight", (h * qk, q_lora), "linear"
            if bias:
                yield a + "q_a_proj.bias", (q_lora,), "bias"
        yield a + "kv_a_proj_with_mqa.weight", (r + rope, d), "linear"
        yield a + "kv_a_layernorm.weight", (r,), "norm"
        yield a + "kv_b_proj.weight", (h * (nope + v), r), "linear"
        yield a + "o_proj.weight", (d, h * v), "linear"
        if bias:
            yield a + "kv_a_proj_with_mqa.bias", (r + rope,), "bias"
            yield a + "o_proj.bias", (d,), "bias"
        if i < config["first_k_dense_replace"]:
            f = config["intermediate_size"]
            yield p + "mlp.gate_proj.weight", (f, d), "linear"
            yield p + "mlp.up_proj.weight", (f, d), "linear"
            yield p + "mlp.down_proj.weight", (d, f), "linear"
            continue
        yield p + "mlp.gate.weight", (e, d), "router"
        yield p + "mlp.gate.e_score_correction_bias", (e,), "router_bias"
        for j in range(e):
            yield p + f"mlp.experts.{j}.gate_proj.weight", (m, d), "linear"
            yield p + f"mlp.experts.{j}.up_proj.weight", (m, d), "linear"
            yield p + f"mlp.experts.{j}.down_proj.weight", (d, m), "linear"
        shared = m * (config.get("n_shared_experts") or 0)
        if shared:
            yield p + "mlp.shared_experts.gate_proj.weight", (shared, d), "linear"
            yield p + "mlp.shared_experts.up_proj.weight", (shared, d), "linear"
            yield p + "mlp.shared_experts.down_proj.weight", (d, shared), "linear"
    yield "model.norm.weight", (d,), "norm"
    yield "lm_head.weight", (config["vocab_size"], d), "lm_head"


def random_fp8_model(
    config: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    keep_fp8: bool = True,
    seed: int = 0,
    n_ctx: int = 8192,
    block_size: tuple[int, int] = (128, 128),
    name: str = "random-fp8-deepseek-v3",
) -> Any:
    """A DeepSeek-V3 HookedTransformer with random block-FP8 weights generated directly on `device`.

    Goes through the streaming loader's own store path (FP8 kept or dequantised exactly as from a checkpoint), one
    tensor at a time, so models far larger than host RAM build without files. The same seed gives the same
    weights in both keep_fp8 modes (one generator, same draw order). Weight std is 1/sqrt(fan_in), so
    activations stay O(1) at any width; the router is scaled up so routing varies.
    """
    from types import SimpleNamespace

    from transformer_lens import HookedTransformer

    from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig, hf_to_tl_config_dict
    from r1_plugin.models.deepseek_v3.streaming import StreamingLoader

    config = dict(config)
    config["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block_size),
    }
    tl = hf_to_tl_config_dict(config, name)
    tl.update(n_ctx=n_ctx, device=str(device), dtype=dtype, tokenizer_name=None)
    cfg = DeepseekV3HookedConfig(**tl)
    cfg.keep_fp8 = keep_fp8
    with torch.device("meta"):
        model = HookedTransformer(cfg, None, move_to_device=False)
    loader = StreamingLoader(model, SimpleNamespace(name=name), config, keep_fp8=keep_fp8)  # type: ignore[arg-type]
    gen = torch.Generator(device=device).manual_seed(seed)
    b0, b1 = block_size
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    for key, shape, kind in published_tensor_specs(config):
        if kind == "linear":
            rows, cols = shape
            q = (torch.randn(shape, generator=gen, device=device) * 64).clamp_(-fp8_max, fp8_max)
            grid = (-(-rows // b0), -(-cols // b1))
            scale = (1 + 0.1 * torch.rand(grid, generator=gen, device=device)) / (64 * cols**0.5)
            loader.add(key, q.to(torch.float8_e4m3fn), scale)
            continue
        if kind == "norm":
            value = 1 + 0.1 * torch.randn(shape, generator=gen, device=device)
        elif kind == "router":
            value = torch.randn(shape, generator=gen, device=device) * (4 / shape[1] ** 0.5)
        elif kind in ("router_bias", "bias"):
            value = torch.randn(shape, generator=gen, device=device) * 0.05
        elif kind == "embed":
            value = torch.randn(shape, generator=gen, device=device)
        else:  # lm_head
            value = torch.randn(shape, generator=gen, device=device) / shape[1] ** 0.5
        loader.add(key, value if kind == "router_bias" else value.to(dtype))
    loader.finish()
    return model.eval()


# Damages a downloaded checkpoint folder can suffer (interrupted downloads, disk faults, files from another model).
DAMAGES = (
    "truncated_shard", "garbage_index", "index_without_weight_map", "index_names_missing_shard",
    "tensor_missing_from_shard", "wrong_dtype", "wrong_shape", "garbage_config",
)


def damage_checkpoint(folder: Path, damage: str) -> tuple[str, str | None]:
    """Apply one of DAMAGES to a sharded checkpoint folder (n_shards >= 2); returns (damaged file, tensor or None)."""
    from safetensors.torch import load_file, save_file

    index_path = folder / "model.safetensors.index.json"
    weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
    shard = sorted(set(weight_map.values()))[-1]
    key = sorted(k for k, s in weight_map.items() if s == shard and k.endswith("o_proj.weight"))[0]
    if damage == "truncated_shard":
        data = (folder / shard).read_bytes()
        (folder / shard).write_bytes(data[: len(data) // 2])
        return shard, None
    if damage == "garbage_index":
        index_path.write_text('{"metadata": {"total_size": 12}, "weight_map": {"model.embed')
        return index_path.name, None
    if damage == "index_without_weight_map":
        index_path.write_text(json.dumps({"metadata": {"total_size": 12}}))
        return index_path.name, None
    if damage == "index_names_missing_shard":
        (folder / shard).unlink()
        return shard, None
    if damage == "garbage_config":
        (folder / "config.json").write_text('{"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 4')
        return "config.json", None
    tensors = load_file(folder / shard)
    if damage == "tensor_missing_from_shard":
        del tensors[key]
    elif damage == "wrong_dtype":
        tensors[key] = torch.zeros(tensors[key].shape, dtype=torch.int32)
    elif damage == "wrong_shape":
        tensors[key] = tensors[key][:-1].contiguous()
    else:
        raise ValueError(f"unknown damage {damage!r}; one of {DAMAGES}")
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    return shard, key
