"""TransformerBridge.boot_transformers(..., keep_fp8=...) on an R1-format FP8 folder: FP8 kept in memory (or
dequantised once), computing in the requested dtype, with transformers' numbers on the exactly dequantised weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401  (applies the patches when transformer_lens is imported)
from r1_plugin.models.deepseek_v3.fp8 import dequantize_blockwise
from r1_plugin.models.deepseek_v3.fp8_weights import Fp8Weight, resident_bytes
from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

pytestmark = pytest.mark.bridge
FP8 = torch.float8_e4m3fn
BLOCK = (16, 16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, dict]:
    """3 layers (1 dense, 2 MoE), 2 shards, 16x16 blocks (partial blocks in kv_a_proj and d_model 48)."""
    folder = tmp_path_factory.mktemp("bridge_fp8") / "ckpt"
    config = tiny_config(num_hidden_layers=3)
    written = write_tiny_checkpoint(config=config, seed=1, storage="fp8", n_shards=2, block_size=BLOCK, folder=folder)
    return str(folder), written.config, written.tensors


def eager_experts(model: object) -> object:
    """transformers' model with its eager experts loop, the one the bridge's R1 runs (see bridge_loading)."""
    model.config._experts_implementation = "eager"  # type: ignore[attr-defined]
    return model


def dequantised(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint dequantised exactly in float32 (the reference every path must equal)."""
    out = {}
    for key, value in tensors.items():
        if key.endswith("_scale_inv"):
            continue
        out[key] = (dequantize_blockwise(value, tensors[key + "_scale_inv"], BLOCK, torch.float32)
                    if value.dtype == FP8 else value.float())
    return out


def boot(path: str, **kwargs: object) -> object:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(path, device="cpu", **kwargs)


def tokens(config: dict, shape: tuple[int, int] = (2, 11)) -> torch.Tensor:
    return torch.randint(2, config["vocab_size"], shape, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def pair(ckpt: tuple[str, dict, dict]) -> tuple[object, object]:
    path = ckpt[0]
    return boot(path, dtype=torch.float32, keep_fp8=True), boot(path, dtype=torch.float32, keep_fp8=False)


def test_float32_logits_equal_transformers_on_exact_dequantisation(
    pair: tuple[object, object], ckpt: tuple[str, dict, dict]
) -> None:
    _, config, tensors = ckpt
    reference = eager_experts(hf_reference_model(config, dequantised(tensors)))
    toks = tokens(config)
    with torch.no_grad():
        expected = reference(toks).logits
        kept, plain = pair[0](toks), pair[1](toks)  # type: ignore[operator]
    assert kept.dtype == plain.dtype == torch.float32
    assert torch.equal(kept, plain)  # difference exactly 0
    assert torch.equal(kept, expected)


def test_fp8_weights_stay_fp8_only_with_keep_fp8(pair: tuple[object, object]) -> None:
    kept, plain = (b.original_model for b in pair)  # type: ignore[attr-defined]
    fp8_kept = [m for m in kept.modules() if isinstance(m, Fp8Weight)]
    # per layer: q_a, q_b, kv_a, kv_b, o (5) + dense gate/up/down (3) or shared gate/up/down + expert stacks (3 + 2)
    assert len(fp8_kept) == 5 * 3 + 3 + 2 * 5
    assert all(m.parametrizations[a].original.dtype == FP8  # type: ignore[index]
               for m in kept.modules() for a in getattr(m, "parametrizations", {}))
    assert not any(isinstance(m, Fp8Weight) for m in plain.modules())
    assert not any(p.dtype == FP8 for p in plain.parameters())
    assert resident_bytes(kept.model.layers) < 0.4 * resident_bytes(plain.model.layers)
    # reading a kept weight gives the dequantised float32 matrix the plain model stores
    assert torch.equal(kept.model.layers[1].mlp.experts.gate_up_proj, plain.model.layers[1].mlp.experts.gate_up_proj)


def test_bfloat16_is_kept_and_both_paths_agree(ckpt: tuple[str, dict, dict]) -> None:
    path, config, _ = ckpt
    kept, plain = boot(path, dtype=torch.bfloat16, keep_fp8=True), boot(path, dtype=torch.bfloat16)
    toks = tokens(config)
    with torch.no_grad():
        a, b = kept(toks), plain(toks)  # type: ignore[operator]
    assert kept.original_model.model.layers[0].self_attn.q_a_proj.weight.dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert torch.equal(a, b)


def test_float32_is_not_silently_bf16(ckpt: tuple[str, dict, dict]) -> None:
    """The default (keep_fp8 not given) is the exact float32 dequantisation too, not transformers' bf16 one."""
    path, config, tensors = ckpt
    bridge = boot(path, dtype=torch.float32)
    assert {p.dtype for p in bridge.original_model.parameters()} == {torch.float32}  # type: ignore[attr-defined]
    bf16_weights = {k: v.to(torch.bfloat16).float() for k, v in dequantised(tensors).items()}
    toks = tokens(config)
    with torch.no_grad():
        ours = bridge(toks)  # type: ignore[operator]
        bf16 = eager_experts(hf_reference_model(config, bf16_weights))(toks).logits
        exact = eager_experts(hf_reference_model(config, dequantised(tensors)))(toks).logits
    assert torch.equal(ours, exact)
    assert (bf16 - exact).abs().max() > 1e-3  # what the silent bf16 dequantisation would have cost


def test_cached_generation_equals_uncached(pair: tuple[object, object], ckpt: tuple[str, dict, dict]) -> None:
    bridge = pair[0]
    toks = tokens(ckpt[1], (1, 7))
    with torch.no_grad():
        cached = bridge.generate(toks, max_new_tokens=5, do_sample=False, use_past_kv_cache=True, verbose=False)  # type: ignore[attr-defined]
        uncached = bridge.generate(toks, max_new_tokens=5, do_sample=False, use_past_kv_cache=False, verbose=False)  # type: ignore[attr-defined]
    assert torch.equal(cached, uncached)


def test_explicit_device_map_is_honoured(ckpt: tuple[str, dict, dict], pair: tuple[object, object]) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    path, config, _ = ckpt
    device_map = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    bridge = TransformerBridge.boot_transformers(path, dtype=torch.float32, keep_fp8=True, device_map=device_map)
    assert bridge.original_model.hf_device_map == device_map  # type: ignore[attr-defined]
    toks = tokens(config)
    with torch.no_grad():
        assert torch.equal(bridge(toks), pair[0](toks))  # type: ignore[operator]


def test_device_map_missing_a_module_is_an_error(ckpt: tuple[str, dict, dict]) -> None:
    from r1_plugin.models.r1_bridge.loading import BridgeLoadError

    with pytest.raises(BridgeLoadError, match="places no module containing model.embed_tokens"):
        from transformer_lens.model_bridge import TransformerBridge

        TransformerBridge.boot_transformers(ckpt[0], keep_fp8=True, device_map={"lm_head": "cpu"})


def test_unknown_keyword_and_keep_fp8_on_other_models_are_errors(ckpt: tuple[str, dict, dict], tmp_path: Path) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    with pytest.raises(TypeError, match="keep_fp9"):
        TransformerBridge.boot_transformers(ckpt[0], keep_fp9=True)
    with pytest.raises(ValueError, match="keep_fp8=True applies to DeepSeek-V3"):
        TransformerBridge.boot_transformers(str(tmp_path), keep_fp8=True)


def test_n_devices_and_hf_model_with_keep_fp8(ckpt: tuple[str, dict, dict]) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    if not torch.cuda.is_available():  # resolved by TransformerLens itself, as for any model
        with pytest.raises(ValueError, match="n_devices=2 requires CUDA"):
            TransformerBridge.boot_transformers(ckpt[0], keep_fp8=True, n_devices=2)
    with pytest.raises(ValueError, match="with hf_model=... the model you pass is used as it is"):
        TransformerBridge.boot_transformers(ckpt[0], keep_fp8=True, hf_model=torch.nn.Linear(1, 1))


def test_compatibility_mode_without_processing_keeps_fp8(ckpt: tuple[str, dict, dict]) -> None:
    """HookedTransformer's aliases on a keep_fp8 bridge; weight processing needs dequantised weights (TL refuses)."""
    path, config, _ = ckpt
    bridge = boot(path, dtype=torch.float32, keep_fp8=True)
    toks = tokens(config)
    with torch.no_grad():
        before = bridge(toks)  # type: ignore[operator]
        bridge.enable_compatibility_mode(no_processing=True)  # type: ignore[attr-defined]
        _, cache = bridge.run_with_cache(toks)  # type: ignore[attr-defined]
        assert torch.equal(bridge(toks), before)  # type: ignore[operator]
    assert torch.equal(cache["blocks.2.hook_resid_post"], cache["blocks.2.hook_out"])
    assert cache["blocks.2.mlp.hook_expert_indices"].shape == (toks.numel(), config["num_experts_per_tok"])
    with pytest.raises(NotImplementedError, match="float8_e4m3fn"):
        boot(path, dtype=torch.float32, keep_fp8=True).enable_compatibility_mode()  # type: ignore[attr-defined]


def test_unquantised_deepseek_folder_takes_the_stock_path(tmp_path: Path) -> None:
    config = tiny_config(num_hidden_layers=2)
    written = write_tiny_checkpoint(config=config, seed=2, storage="float32", folder=tmp_path / "f32")
    bridge = boot(str(written.snapshot), dtype=torch.float32, keep_fp8=True)  # nothing FP8 to keep
    toks = tokens(config)
    with torch.no_grad():
        expected = hf_reference_model(config, written.tensors)(toks).logits
        assert (bridge(toks) - expected).abs().max() < 1e-5  # type: ignore[operator]


def test_routed_experts_dequantised_one_at_a_time_only_when_used(
    pair: tuple[object, object], ckpt: tuple[str, dict, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge, config = pair[0], ckpt[1]
    calls: list[tuple[tuple[int, ...], int | None]] = []
    original = Fp8Weight.dequantize

    def spy(self: Fp8Weight, weight: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((tuple(weight.shape), None if experts is None else experts.numel()))
        return original(self, weight, experts)

    monkeypatch.setattr(Fp8Weight, "dequantize", spy)
    toks = tokens(config, (1, 3))
    _, cache = bridge.run_with_cache(toks)  # type: ignore[attr-defined]
    n_experts = config["n_routed_experts"]
    stacked = [c for c in calls if len(c[0]) == 3]
    assert stacked and all(n == 1 for _, n in stacked)  # never the whole [E, ...] stack at once
    used = sum(cache[f"blocks.{i}.mlp.hook_expert_indices"].unique().numel()
               for i in range(config["first_k_dense_replace"], config["num_hidden_layers"]))
    assert len(stacked) == 2 * used < 2 * n_experts * 2  # gate_up and down of each used expert, once per forward
