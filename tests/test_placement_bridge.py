"""plan_devices(backend="bridge"): TransformerBridge's bytes (transformers' layout, per-head K/V cache) from
config.json alone, equal to what r1_plugin's bridge loader builds; the matching boot_transformers device_map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401
from r1_plugin import plan_devices
from r1_plugin.models.deepseek_v3.fp8_weights import resident_bytes
from r1_plugin.models.device_plan import bridge_device_map, kv_numbers_per_token, model_bytes
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

pytestmark = pytest.mark.bridge


def test_r1_bridge_kv_cache_is_71x_the_latent(r1_configs: Path) -> None:
    import json

    config = json.loads((r1_configs / "deepseek-r1.json").read_text())
    assert kv_numbers_per_token(config, "hooked") == 512 + 64 == 576
    assert kv_numbers_per_token(config, "bridge") == 128 * (128 + 64 + 128) == 40_960
    assert round(40_960 / 576, 1) == 71.1
    tokens = 4096
    hooked = plan_devices(config, 8, "141GB", keep_fp8=True, kv_cache_tokens=tokens)
    bridge = plan_devices(config, 8, "141GB", keep_fp8=True, kv_cache_tokens=tokens, backend="bridge")
    per_token_layer = sum(d.kv_cache for d in bridge.devices) / (tokens * 61 * 2)
    assert per_token_layer == 40_960
    assert sum(d.kv_cache for d in bridge.devices) == 71.11111111111111 * sum(d.kv_cache for d in hooked.devices)
    assert "backend bridge (per-head K/V cache)" in str(bridge) and "backend hooked (latent cache)" in str(hooked)
    # Weights differ only by layout details (router in dtype, kv_b_proj whole): within 0.1%.
    assert abs(bridge.total_weights - hooked.total_weights) < 1e-3 * hooked.total_weights
    with pytest.raises(ValueError, match="backend must be one of"):
        plan_devices(config, 8, "141GB", backend="vllm")


@pytest.mark.parametrize("keep_fp8", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bridge_bytes_equal_the_booted_model(tmp_path: Path, keep_fp8: bool, dtype: torch.dtype) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    config = tiny_config(num_hidden_layers=3, first_k_dense_replace=1, attention_bias=True)
    ck = write_tiny_checkpoint(config=config, seed=2, storage="fp8", block_size=(16, 16), folder=tmp_path / "c")
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "c"), device="cpu", dtype=dtype, keep_fp8=keep_fp8)
    hf = bridge.original_model
    sizes = model_bytes(ck.config, str(dtype), keep_fp8=keep_fp8, backend="bridge")
    assert sizes.blocks == [resident_bytes(layer) for layer in hf.model.layers]
    assert sizes.embed == resident_bytes(hf.model.embed_tokens)
    assert sizes.unembed == resident_bytes(hf.lm_head) + resident_bytes(hf.model.norm)


def test_bridge_device_map_follows_the_plan(r1_configs: Path, tmp_path: Path) -> None:
    plan = plan_devices(r1_configs / "deepseek-r1.json", 8, "141GB", keep_fp8=True, backend="bridge")
    device_map = bridge_device_map(plan)
    assert [device_map[f"model.layers.{i}"] for i in range(61)] == plan.block_devices
    assert device_map["model.embed_tokens"] == device_map["model.rotary_emb"] == 0
    assert device_map["model.norm"] == device_map["lm_head"] == 7
    with pytest.raises(ValueError, match="backend='bridge'"):
        bridge_device_map(plan_devices(r1_configs / "deepseek-r1.json", 8, "141GB", keep_fp8=True))


def test_cli_models_plan_backend_bridge(r1_configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from r1_plugin.cli import main

    r1 = str(r1_configs / "deepseek-r1.json")
    args = ["models", "plan", r1, "--n-devices", "8", "--memory-per-device", "141GB", "--keep-fp8", "--kv-cache-tokens", "1024"]
    assert main([*args, "--backend", "bridge"]) == 0
    out = capsys.readouterr().out
    assert "backend bridge (per-head K/V cache)" in out and "fits: yes" in out
    assert main([*args, "--backend", "vllm"]) == 2
