"""Damaged DeepSeek-V3 checkpoints and impossible configs (DeepSeek-V3 and the distills): each is refused naming
the file (or field), what is wrong and what to do, before any weight is read where possible (#20 items 5, 6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformer_lens import HookedTransformer

from r1_plugin.errors import CheckpointError, R1PluginError, UnsupportedArchitectureError
from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig, hf_to_tl_config_dict, validate_config
from r1_plugin.testing.deepseek_checkpoints import (
    DAMAGES,
    damage_checkpoint,
    tiny_config,
    write_tiny_checkpoint,
)
from r1_plugin.values import InvalidValueError

# What each damage must say (besides the file name and the command that fetches it again).
WHAT = {
    "truncated_shard": "not a readable safetensors file, likely truncated",
    "garbage_index": "is not valid JSON",
    "index_without_weight_map": "has no `weight_map`",
    "index_names_missing_shard": "names 1 shard(s) that are not in the folder",
    "tensor_missing_from_shard": "does not hold tensor",
    "wrong_dtype": "as torch.int32, which is not a weight dtype",
    "wrong_shape": "config.json gives it",
    "garbage_config": "not a readable HF config.json",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_folder_names_the_file_what_is_wrong_and_the_fix(
    tmp_path: Path, damage: str, opened_shards: list[str]
) -> None:
    folder = tmp_path / "ckpt"
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=2), seed=2, folder=folder, n_shards=3)
    filename, key = damage_checkpoint(folder, damage)
    with pytest.raises(R1PluginError) as info:
        HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu")
    message = str(info.value)
    assert filename in message and WHAT[damage] in message, message
    assert key is None or key in message, message
    assert "hf download" in message and "--force-download" in message, message
    assert "\n" not in message
    if damage in ("truncated_shard", "garbage_index", "index_without_weight_map", "index_names_missing_shard"):
        assert isinstance(info.value, CheckpointError)
        assert not opened_shards or damage == "truncated_shard"  # refused before reading weights
    if damage == "truncated_shard":
        assert opened_shards[-1] == filename  # named when that shard is opened


def test_damaged_shard_in_the_hf_cache_names_the_repo_command(hf_cache: Path) -> None:
    name = "deepseek-ai/DeepSeek-R1-Zero"
    ck = write_tiny_checkpoint(name, tiny_config(num_hidden_layers=2), seed=4, n_shards=2)
    shard = sorted(n for n in ck.files if n.endswith(".safetensors"))[0]
    path = (ck.snapshot / shard).resolve()  # the blob the snapshot links to
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"{shard} of {name}: is not a readable safetensors file.*"
                                              rf"`hf download {name} {shard} --force-download`"):
        HookedTransformer.from_pretrained_no_processing(name, device="cpu")


# (field, bad value, words the message must hold): each value loads today and fails later, or gives wrong numbers.
BAD_FIELDS = [
    ("num_experts_per_tok", 0, "from 1 to 4"),
    ("num_experts_per_tok", -1, "from 1 to 4"),
    ("num_experts_per_tok", 5, "from 1 to 4"),
    ("num_hidden_layers", -1, ">= 1"),
    ("num_hidden_layers", 0, ">= 1"),
    ("rms_norm_eps", -1, "> 0"),
    ("rms_norm_eps", 0, "> 0"),
    ("rms_norm_eps", math.nan, "finite"),
    ("n_group", 0, "from 1 to 8"),
    ("topk_group", 0, "from 1 to 2"),
    ("topk_group", 3, "from 1 to 2"),
    ("n_group", 3, "divisible by n_group=3"),
    ("n_group", 8, "expert per group"),
    ("hidden_size", 0, ">= 1"),
    ("num_attention_heads", -4, ">= 1"),
    ("kv_lora_rank", 0, ">= 1"),
    ("q_lora_rank", 0, ">= 1"),
    ("qk_nope_head_dim", 0, ">= 1"),
    ("qk_rope_head_dim", 7, "must be even"),
    ("qk_rope_head_dim", 0, ">= 2"),
    ("v_head_dim", -12, ">= 1"),
    ("moe_intermediate_size", 0, ">= 1"),
    ("intermediate_size", 0, ">= 1"),
    ("n_routed_experts", 0, ">= 1"),
    ("n_shared_experts", -1, ">= 0"),
    ("first_k_dense_replace", -1, ">= 0"),
    ("vocab_size", 0, ">= 1"),
    ("max_position_embeddings", 0, ">= 1"),
    ("routed_scaling_factor", 0, "> 0"),
    ("rope_theta", -10000, "> 0"),
    ("num_hidden_layers", 2.5, "must be an integer"),
    ("num_experts_per_tok", True, "must be an integer"),
    ("quantization_config", {"quant_method": "fp8", "weight_block_size": [0, 0]}, "`weight_block_size` (allowed: an "
     "integer >= 1) must be >= 1, got 0"),
    ("quantization_config", {"quant_method": "fp8", "weight_block_size": [128]}, "two integers [rows, cols], got [128]"),
    ("rope_scaling", {"type": "yarn", "factor": 0, "original_max_position_embeddings": 64}, "`factor` (allowed: a "
     "finite number > 0) must be > 0, got 0"),
    ("rope_scaling", {"type": "yarn", "factor": 40, "original_max_position_embeddings": 0},
     "`original_max_position_embeddings` (allowed: an integer >= 1) must be >= 1, got 0"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_FIELDS, ids=[f"{f}={v}" for f, v, _ in BAD_FIELDS])
def test_validate_config_names_field_value_and_range(field: str, value: object, words: str) -> None:
    config = tiny_config(num_hidden_layers=2)  # 8 experts in 2 groups, top-1 group: 4 experts reachable
    config[field] = value
    with pytest.raises(InvalidValueError) as info:
        validate_config(config, "my-ckpt")
    message = str(info.value)
    shown = "nan" if isinstance(value, float) and math.isnan(value) else str(value)
    assert message.startswith("my-ckpt") and words in message, message
    assert isinstance(value, dict) or shown in message, message
    if field not in ("quantization_config", "rope_scaling"):
        assert f"`{field}`" in message or f"{field}=" in message, message
    with pytest.raises(InvalidValueError):  # the converter refuses it too (no `or 1` that turns 0 into 1)
        hf_to_tl_config_dict(config, "my-ckpt")


@pytest.mark.parametrize(("field", "value"), [("scoring_func", "softmax"), ("hidden_act", "gelu"), ("moe_layer_freq", 2), ("moe_layer_freq", 0),
                                              ("num_key_value_heads", 2),
                                              ("quantization_config", {"quant_method": "gptq"})])
def test_other_architectures_are_unsupported_not_invalid(field: str, value: object) -> None:
    config = tiny_config()
    config[field] = value
    with pytest.raises(UnsupportedArchitectureError, match=field if field != "quantization_config" else "quant_method"):
        validate_config(config, "my-ckpt")


def test_published_configs_and_nulls_pass(r1_configs: Path) -> None:
    for name in ("deepseek-r1.json", "deepseek-v3.json"):
        validate_config(json.loads((r1_configs / name).read_text()), name)
    config = tiny_config(n_group=None, topk_group=None, q_lora_rank=None, first_k_dense_replace=None,
                         n_shared_experts=None)
    validate_config(config)
    tl = hf_to_tl_config_dict(config, "x")
    assert (tl["n_group"], tl["topk_group"], tl["first_k_dense_replace"], tl["n_shared_experts"]) == (1, 1, 0, 0)


def test_transformers_config_object_is_validated_too() -> None:
    from transformers import DeepseekV3Config

    good = tiny_config()
    hf = DeepseekV3Config(**{k: v for k, v in good.items() if k != "architectures"})
    validate_config(hf, "object")
    hf.num_experts_per_tok = 0
    with pytest.raises(InvalidValueError, match="num_experts_per_tok"):
        validate_config(hf, "object")


def test_hooked_config_built_directly_is_checked_by_the_same_rules() -> None:
    with pytest.raises(InvalidValueError, match=r"`num_experts_per_tok`.*from 1 to 8.*got 0"):
        DeepseekV3HookedConfig(d_model=48, n_layers=2, n_ctx=32, d_head=12, n_heads=4, d_vocab=64, act_fn="silu",
                               num_experts=8, experts_per_token=0)
    with pytest.raises(InvalidValueError, match=r"`rms_norm_eps`.*got -1"):
        DeepseekV3HookedConfig(d_model=48, n_layers=2, n_ctx=32, d_head=12, n_heads=4, d_vocab=64, act_fn="silu",
                               num_experts=8, experts_per_token=2, eps=-1.0)


@pytest.mark.parametrize(("field", "value"), [("num_experts_per_tok", 0), ("rms_norm_eps", -1), ("n_group", 0),
                                              ("num_hidden_layers", -1)])
def test_bad_config_is_refused_at_load_before_any_weight(
    tmp_path: Path, field: str, value: object, opened_shards: list[str]
) -> None:
    folder = tmp_path / "ckpt"
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=2), seed=1, folder=folder, n_shards=2)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidValueError, match=rf"`{field}`.*got {value}"):
        HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu")
    assert not opened_shards


DISTILL_BAD = [
    ("r1-distill-qwen-1.5b.json", "rms_norm_eps", -1e-6, "> 0"),
    ("r1-distill-qwen-1.5b.json", "rms_norm_eps", 0, "> 0"),
    ("r1-distill-qwen-1.5b.json", "rope_theta", 0, "> 0"),
    ("r1-distill-qwen-1.5b.json", "num_key_value_heads", 5, "must divide num_attention_heads=12"),
    ("r1-distill-qwen-1.5b.json", "num_key_value_heads", 0, "from 1 to 12"),
    ("r1-distill-qwen-1.5b.json", "num_hidden_layers", -1, ">= 1"),
    ("r1-distill-qwen-1.5b.json", "hidden_size", 1537, "not divisible by num_attention_heads=12"),
    ("r1-distill-llama-8b.json", "rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     "`high_freq_factor`=4.0 must be greater than `low_freq_factor`=4.0"),
    ("r1-distill-llama-8b.json", "rope_scaling", {"rope_type": "llama3", "factor": 0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     "`factor` (allowed: a finite number > 0) must be > 0, got 0"),
]


@pytest.mark.parametrize(("file", "field", "value", "words"), DISTILL_BAD,
                         ids=[f"{f}:{k}={v}" for f, k, v, _ in DISTILL_BAD])
def test_distill_config_values_that_give_wrong_numbers_are_refused(
    r1_configs: Path, file: str, field: str, value: object, words: str
) -> None:
    from r1_plugin.models.configs import hf_to_tl_config

    config = json.loads((r1_configs / file).read_text())
    hf_to_tl_config(dict(config), "distill")  # the published config converts
    config[field] = value
    with pytest.raises(InvalidValueError) as info:
        hf_to_tl_config(config, "distill")
    assert str(info.value).startswith("distill") and words in str(info.value), str(info.value)


def test_all_published_distill_configs_pass(r1_configs: Path) -> None:
    from r1_plugin.models.configs import validate_dense_config

    for path in sorted(r1_configs.glob("r1-distill-*.json")):
        validate_dense_config(json.loads(path.read_text()), path.name)


def test_fp8_weight_without_its_scale_names_shard_and_tensor(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "fp8"
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=2), seed=6, folder=folder, storage="fp8", n_shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = "model.layers.1.self_attn.o_proj.weight_scale_inv"
    shard = index["weight_map"].pop(key)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    tensors = load_file(folder / shard)
    del tensors[key]
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{shard}: stores model.layers.1.self_attn.o_proj.weight in FP8, but "
                                              rf"the checkpoint has no {key}.*hf download"):
        HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu")


def test_validate_config_needs_no_transformer_lens() -> None:
    """The bridge loader calls validate_config under TransformerLens 4 too: its module imports no TransformerLens."""
    import subprocess
    import sys

    import r1_plugin.models.deepseek_v3.config_checks as checks

    code = f"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformer_lens", "torch"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("config_checks", {str(checks.__file__)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = {json.dumps(tiny_config(vocab_size=300))!r}
import json
module.validate_config(json.loads(config), "x")
try:
    module.validate_config({{**json.loads(config), "n_group": 0}}, "x")
except ValueError as exc:
    print("refused:", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: x: config field `n_group`" in out.stdout


def test_hub_repo_without_a_shard_its_index_names(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, the hub answers 404 for a shard the index lists: an error naming the repo and the file."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    name = "deepseek-ai/DeepSeek-V3"
    ck = write_tiny_checkpoint(name, tiny_config(num_hidden_layers=2), seed=4, n_shards=2)
    shard = sorted(n for n in ck.files if n.endswith(".safetensors"))[-1]
    original = huggingface_hub.hf_hub_download

    def download(repo_id: str, filename: str, **kwargs: object) -> str:
        if filename == shard:
            url = f"https://huggingface.co/{repo_id}/resolve/main/{filename}"
            response = httpx2.Response(404, request=httpx2.Request("GET", url))
            raise RemoteEntryNotFoundError(f"404 Client Error. Entry Not Found for url: {url}", response=response)
        return original(repo_id, filename, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(CheckpointError, match=rf"{name} has no file {shard}: the checkpoint's index names a file"):
        HookedTransformer.from_pretrained_no_processing(name, device="cpu")
