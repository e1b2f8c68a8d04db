"""FP8 scale shapes are checked on every load path (HookedTransformer and TransformerBridge, keep_fp8 True and
False): a checkpoint quantised in other blocks than its config says, a scale with an extra row, and a block size of
0 are clear errors, never wrong numbers (issue #20 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401
from r1_plugin.errors import R1PluginError
from r1_plugin.models.deepseek_v3.fp8 import Fp8ScaleError, check_scale_shape, dequantize_blockwise
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

SCALE = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"


def write(folder: Path, block_in_config: list[int] | None = None, extra_row: str | None = None) -> tuple[str, str]:
    """A 2-layer FP8 checkpoint quantised in 16x16 blocks (2 shards); the config may claim another block size, and
    one scale may get an extra row. Returns (folder, shard holding SCALE)."""
    config = tiny_config(num_hidden_layers=2)
    written = write_tiny_checkpoint(config=config, seed=5, storage="fp8", n_shards=2, block_size=(16, 16),
                                    folder=folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shard = index[SCALE]
    if block_in_config is not None:
        raw = json.loads((folder / "config.json").read_text())
        raw["quantization_config"]["weight_block_size"] = block_in_config
        (folder / "config.json").write_text(json.dumps(raw))
    if extra_row is not None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / shard))
        scale = tensors[extra_row]
        tensors[extra_row] = torch.cat([scale, scale[-1:]])
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    assert written.config["quantization_config"]["weight_block_size"] == [16, 16]
    return str(folder), shard


CASES = {
    "config_says_32": {"block_in_config": [32, 32]},
    "extra_scale_row": {"extra_row": SCALE},
}


def load_hooked(path: str, keep_fp8: bool) -> object:
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(path, device="cpu", dtype=torch.float32, keep_fp8=keep_fp8,
                                                           progress=False)


def load_bridge(path: str, keep_fp8: bool) -> object:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32, keep_fp8=keep_fp8)


def test_check_scale_shape_is_ceil_division() -> None:
    assert check_scale_shape("w", (28, 48), (2, 3), [16, 16]) == (16, 16)  # 28 rows: 1.75 blocks -> 2
    assert check_scale_shape("w", (8, 28, 48), (8, 2, 3), (16, 16)) == (16, 16)  # stacked experts
    with pytest.raises(Fp8ScaleError, match=r"in model-00001-of-00002.safetensors: weight_scale_inv has shape \(3, 3\)"):
        check_scale_shape("w", (28, 48), (3, 3), [16, 16], shard="model-00001-of-00002.safetensors")
    with pytest.raises(Fp8ScaleError, match="needs \\(1, 2\\)"):
        check_scale_shape("w", (28, 48), (2, 3), [32, 32])
    for bad in ([0, 0], [16], [16.0, 16], None, [-16, 16]):
        with pytest.raises(Fp8ScaleError, match="two positive integers"):
            check_scale_shape("w", (28, 48), (2, 3), bad)
    with pytest.raises(Fp8ScaleError):
        dequantize_blockwise(torch.zeros(28, 48, dtype=torch.float8_e4m3fn), torch.ones(2, 3), (0, 0))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("keep_fp8", [False, True])
def test_hooked_transformer_refuses(tmp_path: Path, case: str, keep_fp8: bool) -> None:
    path, _ = write(tmp_path / "ckpt", **CASES[case])  # type: ignore[arg-type]
    with pytest.raises(Fp8ScaleError, match="weight_scale_inv has shape"):
        load_hooked(path, keep_fp8)


@pytest.mark.bridge
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("keep_fp8", [False, True])
def test_bridge_refuses_naming_shard_and_tensor(tmp_path: Path, case: str, keep_fp8: bool) -> None:
    path, shard = write(tmp_path / "ckpt", **CASES[case])  # type: ignore[arg-type]
    with pytest.raises(Fp8ScaleError, match=r"model\.layers\.\d+\..+ in model-0000\d-of-00002\.safetensors: "
                                             "weight_scale_inv has shape") as info:
        load_bridge(path, keep_fp8)
    if case == "extra_scale_row":  # the one damaged tensor is named, with its shard
        assert f"model.layers.0.self_attn.q_a_proj.weight in {shard}" in str(info.value)
    assert "fix weight_block_size, or download the shard again" in str(info.value)


@pytest.mark.bridge
@pytest.mark.parametrize("keep_fp8", [False, True])
def test_bridge_block_size_zero_is_a_clear_error(tmp_path: Path, keep_fp8: bool) -> None:
    path, _ = write(tmp_path / "ckpt", block_in_config=[0, 0])
    with pytest.raises(R1PluginError, match="weight_block_size") as info:  # config validation refuses it first
        load_bridge(path, keep_fp8)
    assert not isinstance(info.value, ZeroDivisionError)


@pytest.mark.parametrize("keep_fp8", [False, True])
def test_hooked_transformer_block_size_zero_is_a_clear_error(tmp_path: Path, keep_fp8: bool) -> None:
    path, _ = write(tmp_path / "ckpt", block_in_config=[0, 0])
    with pytest.raises(R1PluginError, match="weight_block_size") as info:  # config validation refuses it first
        load_hooked(path, keep_fp8=keep_fp8)
    assert not isinstance(info.value, ZeroDivisionError)
