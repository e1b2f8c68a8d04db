"""plan_devices: bytes from config.json alone match the loaded model; byte-balanced split; R1's published config."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin import plan_devices
from r1_plugin.errors import ModelDoesNotFitError, R1PluginError
from r1_plugin.models.deepseek_v3 import loading
from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.fp8_weights import resident_bytes
from r1_plugin.models.device_plan import balanced_split, model_bytes, parse_bytes
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

GB = 10**9


def test_full_r1_fits_8x141gb_only_with_keep_fp8(r1_configs: Path) -> None:
    r1 = r1_configs / "deepseek-r1.json"
    plain = plan_devices(r1, 8, "141GB")
    kept = plan_devices(r1, 8, "141GB", keep_fp8=True)
    assert not plain.fits and kept.fits
    assert 1.30e12 < plain.total_weights < 1.38e12  # ~1.34 TB dequantised to bf16 (docs/scale.md)
    assert 0.66e12 < kept.total_weights < 0.71e12  # ~0.69 TB kept in FP8
    assert "keep_fp8=True" in plain.suggestions and "keep_fp8=True" in plain.message()
    assert "device" in plain.message() and "GB" in plain.message()
    # R1[:38] (layer-37 SAE work) with keep_fp8 fits 8 x 80 GB; dequantised to bf16 it does not.
    assert plan_devices(r1, 8, "80GB", keep_fp8=True, first_n_layers=38).fits
    assert not plan_devices(r1, 8, "80GB", first_n_layers=38).fits
    assert not plan_devices(r1, 8, "80GB", keep_fp8=True).fits
    table = str(kept)
    assert "fits: yes" in table and len(table.splitlines()) == 8 + 3


def test_plan_balances_bytes_not_block_counts(r1_configs: Path) -> None:
    plan = plan_devices(r1_configs / "deepseek-r1.json", 8, "141GB", keep_fp8=True)
    counts = [len(dev.blocks) for dev in plan.devices]
    assert sorted(b for dev in plan.devices for b in dev.blocks) == list(range(61))
    assert counts[0] > counts[1]  # device 0 holds the 3 small dense layers and the embedding: more blocks
    weights = [dev.weights for dev in plan.devices]
    moe_layer = model_bytes(plan_config(r1_configs), keep_fp8=True).blocks[-1]
    assert max(weights) - min(weights) <= 1.6 * moe_layer  # within about one MoE layer of each other


def plan_config(r1_configs: Path) -> dict:
    import json

    return json.loads((r1_configs / "deepseek-r1.json").read_text())


def test_kv_cache_and_activation_allowance(r1_configs: Path) -> None:
    config = plan_config(r1_configs)
    plan = plan_devices(config, 8, "141GB", keep_fp8=True, kv_cache_tokens=4096, batch=2)
    assert sum(dev.kv_cache for dev in plan.devices) == 61 * 2 * 4096 * 576 * 2  # latent cache, bf16
    base = plan_devices(config, 8, "141GB", keep_fp8=True)
    assert all(a.activations > b.activations for a, b in zip(plan.devices, base.devices))
    assert all(dev.fp8_transient == 16 * 7168 * 2048 * 11 for dev in base.devices)  # chunk of 16 experts
    assert all(dev.fp8_transient == 0 for dev in plan_devices(config, 8, "200GB").devices)


@pytest.mark.parametrize("keep_fp8", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_config_bytes_equal_loaded_model(tmp_path: Path, keep_fp8: bool, dtype: torch.dtype) -> None:
    config = tiny_config(num_hidden_layers=3, first_k_dense_replace=1, attention_bias=True)
    ck = write_tiny_checkpoint(config=config, seed=2, storage="fp8", block_size=(16, 16), folder=tmp_path / "c")
    model = HookedTransformer.from_pretrained_no_processing(
        str(tmp_path / "c"), device="cpu", dtype=dtype, keep_fp8=keep_fp8, progress=False
    )
    sizes = model_bytes(ck.config, str(dtype), keep_fp8=keep_fp8)
    assert sizes.blocks == [resident_bytes(block) for block in model.blocks]
    assert sizes.embed == resident_bytes(model.embed)
    assert sizes.unembed == resident_bytes(model.unembed) + resident_bytes(model.ln_final)


def test_balanced_split_is_optimal_and_contiguous() -> None:
    g = torch.Generator().manual_seed(0)
    for n, k in [(7, 3), (9, 4), (5, 5), (3, 5), (8, 1)]:
        sizes = torch.randint(1, 100, (n,), generator=g).tolist()
        devices = balanced_split(sizes, k)
        assert devices == sorted(devices) and devices[0] == 0
        got = max(sum(s for s, d in zip(sizes, devices) if d == j) for j in set(devices))
        best = min(
            max(sum(sizes[a:b]) for a, b in zip((0, *cuts), (*cuts, n)))
            for cuts in itertools.combinations(range(1, n), min(k, n) - 1)
        )
        assert got == best


def test_parse_bytes() -> None:
    assert parse_bytes("141GB") == 141 * GB and parse_bytes("80GiB") == 80 * 2**30 and parse_bytes(1024) == 1024
    assert parse_bytes("1.5 TB") == 15 * 10**11 and parse_bytes("512mib") == 512 * 2**20
    for bad in ("80XB", "lots", -1, True):
        with pytest.raises((ValueError, TypeError)):
            parse_bytes(bad)  # type: ignore[arg-type]


def test_from_pretrained_refuses_before_reading_any_weight(tmp_path: Path, opened_shards: list[str]) -> None:
    write_tiny_checkpoint(config=tiny_config(), seed=1, storage="fp8", block_size=(16, 16), folder=tmp_path / "c")
    with pytest.raises(ModelDoesNotFitError, match=r"device 0 needs .* GB.*Would fit") as info:
        HookedTransformer.from_pretrained_no_processing(str(tmp_path / "c"), device="cpu", memory_per_device="1MB")
    assert isinstance(info.value, R1PluginError) and not opened_shards
    # A budget the plan fits loads normally.
    model = HookedTransformer.from_pretrained_no_processing(
        str(tmp_path / "c"), device="cpu", memory_per_device="10GB", progress=False
    )
    assert opened_shards and model.cfg.device_plan is None


def test_n_devices_gets_a_byte_balanced_plan(r1_configs: Path) -> None:
    # TL's config refuses n_devices > 1 without that many GPUs, so the loader's step is exercised directly.
    from r1_plugin.models.device_plan import place_model

    config = plan_config(r1_configs)
    cfg = DeepseekV3HookedConfig(
        d_model=48, n_layers=61, n_ctx=32, d_head=12, n_heads=4, d_vocab=64, act_fn="silu", num_experts=8,
        experts_per_token=2, device="cpu", dtype=torch.bfloat16,
    )
    cfg.device, cfg.n_devices, cfg.keep_fp8 = "cuda", 8, True
    plan = place_model(cfg, config, "deepseek-ai/DeepSeek-R1", "141GB")
    assert plan is not None and plan.fits and cfg.device_plan == plan.block_devices
    assert plan.block_devices == plan_devices(config, 8, "141GB", keep_fp8=True).block_devices
    assert cfg.device_plan != [i * 8 // 61 for i in range(61)]  # not TL's split by count
    cfg.keep_fp8, cfg.device_plan = False, None
    with pytest.raises(ModelDoesNotFitError, match=r"DeepSeek-R1 .*does not fit 8 x 141.0 GB.*keep_fp8=True"):
        place_model(cfg, config, "deepseek-ai/DeepSeek-R1", "141GB")
    assert cfg.device_plan is None


def test_patched_device_lookup_follows_the_plan() -> None:
    from transformer_lens.cache import key_value_cache
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    from r1_plugin._patches import tl_deepseek
    from r1_plugin._patches._hooked import hooked_transformer_module as ht_module

    tl_deepseek.apply()  # idempotent: still one wrapper deep
    assert not getattr(ht_module.get_device_for_block_index.__wrapped_original__, "_r1_plugin_patched", False)
    cfg = DeepseekV3HookedConfig(
        d_model=48, n_layers=4, n_ctx=32, d_head=12, n_heads=4, d_vocab=64, act_fn="silu", num_experts=8,
        experts_per_token=2, device="cpu", device_plan=[0, 1, 1, 1],
    )
    cfg.device, cfg.n_devices = "cuda", 2  # set after construction: TL's config checks for real GPUs
    for lookup in (ht_module.get_device_for_block_index, key_value_cache.get_device_for_block_index):
        assert [lookup(i, cfg).index for i in range(4)] == [0, 1, 1, 1]
    assert loading.target_device("embed.W_E", cfg).index == 0 and loading.target_device("unembed.W_U", cfg).index == 1
    cfg.device_plan = None  # no plan: TransformerLens's split by count
    assert [ht_module.get_device_for_block_index(i, cfg).index for i in range(4)] == [0, 0, 1, 1]
    other = HookedTransformerConfig(d_model=8, n_layers=4, n_ctx=8, d_head=4, act_fn="relu", device="cpu")
    other.device, other.n_devices = "cuda", 2
    assert [ht_module.get_device_for_block_index(i, other).index for i in range(4)] == [0, 0, 1, 1]


def test_cli_models_plan(r1_configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from r1_plugin.cli import main

    r1 = str(r1_configs / "deepseek-r1.json")
    assert main(["models", "plan", r1, "--n-devices", "8", "--memory-per-device", "141GB", "--keep-fp8"]) == 0
    assert "fits: yes" in capsys.readouterr().out
    assert main(["models", "plan", r1, "--n-devices", "8", "--memory-per-device", "141GB"]) == 1
    out = capsys.readouterr().out
    assert "fits: NO" in out and "keep_fp8=True" in out
    args = ["models", "plan", r1, "--n-devices", "8", "--memory-per-device", "80GB", "--keep-fp8", "--first-n-layers", "38"]
    assert main(args) == 0
    assert main(["models", "plan", r1, "--memory", "80XB"]) == 2
    assert "cannot read memory size" in capsys.readouterr().err


def test_plan_reads_config_json_from_the_hf_cache(hf_cache: Path, r1_configs: Path) -> None:
    from r1_plugin.testing.hub import write_hf_repo

    write_hf_repo("r1-plugin-tests/plan-config", {"config.json": (r1_configs / "deepseek-r1.json").read_text()})
    plan = plan_devices("r1-plugin-tests/plan-config", 8, "141GB", keep_fp8=True)
    assert plan.model == "r1-plugin-tests/plan-config" and plan.fits
    assert plan.block_devices == plan_devices(r1_configs / "deepseek-r1.json", 8, "141GB", keep_fp8=True).block_devices
