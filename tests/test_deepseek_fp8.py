"""keep_fp8=True: FP8 weights stay e4m3 in memory and give the dequantise-on-load model's numbers exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.models.deepseek_v3.fp8_weights import (
    Fp8Weight,
    dequantized_state_dict,
    fp8_parts,
    has_fp8_weights,
    resident_bytes,
)
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """4 layers (2 dense, 2 MoE), 4 shards, 16x16 blocks: kv_a_proj (28 rows), d_model 48 and kv_b_proj's per-head
    split (16 + 12 rows) all cut blocks, so partial blocks and a split inside a block are exercised."""
    folder = tmp_path_factory.mktemp("fp8") / "ckpt"
    config = tiny_config(num_hidden_layers=4, first_k_dense_replace=2)
    write_tiny_checkpoint(config=config, seed=3, storage="fp8", n_shards=4, block_size=(16, 16), folder=folder)
    return str(folder), config


def load(path: str, keep_fp8: bool, dtype: torch.dtype = torch.float32, processed: bool = False) -> HookedTransformer:
    loader = HookedTransformer.from_pretrained if processed else HookedTransformer.from_pretrained_no_processing
    return loader(path, device="cpu", dtype=dtype, keep_fp8=keep_fp8, progress=False)


def tokens(config: dict, shape: tuple[int, int] = (2, 20), seed: int = 5) -> torch.Tensor:
    return torch.randint(2, config["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair(ckpt: tuple[str, dict]) -> tuple[HookedTransformer, HookedTransformer]:
    return load(ckpt[0], False), load(ckpt[0], True)


def test_fp8_tensors_stay_fp8(pair: tuple[HookedTransformer, HookedTransformer]) -> None:
    plain, kept = pair
    assert not has_fp8_weights(plain) and has_fp8_weights(kept)
    attn, dense, moe = kept.blocks[2].attn, kept.blocks[0].mlp, kept.blocks[2].mlp
    for module, attr in [(attn, "W_Q_a"), (attn, "W_Q_b"), (attn, "W_KV_a"), (attn, "W_K_b"), (attn, "W_V_b"),
                         (attn, "W_O"), (dense, "W_gate"), (dense, "W_out"), (moe.experts, "W_gate"),
                         (moe.experts, "W_out"), (moe.shared_experts, "W_in")]:
        parts = fp8_parts(module, attr)
        assert parts is not None and parts[0].dtype == FP8, (module, attr)
    assert moe.experts.parametrizations.W_gate.original.shape == (8, 24, 48)  # checkpoint [E, out, in] layout
    assert moe.W_router.dtype == torch.float32 and fp8_parts(moe, "W_router") is None
    assert sum(isinstance(m, Fp8Weight) for m in kept.modules()) == 4 * 6 + 2 * 3 + 2 * 6


def test_weights_read_back_dequantised_and_identical(pair: tuple[HookedTransformer, HookedTransformer]) -> None:
    plain, kept = pair
    kept_params = dict(dequantized_state_dict(kept))
    plain_params = plain.state_dict()
    assert kept_params.keys() == plain_params.keys()
    for name, value in plain_params.items():
        assert kept_params[name].dtype == value.dtype and torch.equal(kept_params[name], value), name
    # Attribute access (what attention.py and users read) gives the same tensor, in the same memory layout.
    for attr in ("W_Q_b", "W_K_b", "W_V_b", "W_O"):
        a, b = getattr(plain.blocks[1].attn, attr), getattr(kept.blocks[1].attn, attr)
        assert torch.equal(a, b) and a.stride() == b.stride(), attr
    assert torch.equal(plain.blocks[3].mlp.experts.W_in, kept.blocks[3].mlp.experts.W_in)


def test_float32_logits_and_every_hook_equal(
    pair: tuple[HookedTransformer, HookedTransformer], ckpt: tuple[str, dict]
) -> None:
    plain, kept = pair
    toks = tokens(ckpt[1])
    with torch.no_grad():
        ref_logits, ref_cache = plain.run_with_cache(toks)
        logits, cache = kept.run_with_cache(toks)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    assert set(cache.keys()) == set(ref_cache.keys()) and len(cache.keys()) > 100
    for name in ref_cache.keys():
        torch.testing.assert_close(cache[name], ref_cache[name], atol=1e-5, rtol=0, msg=name)


def test_greedy_tokens_with_and_without_cache(
    pair: tuple[HookedTransformer, HookedTransformer], ckpt: tuple[str, dict]
) -> None:
    plain, kept = pair
    prompt = tokens(ckpt[1], (2, 6), seed=9)
    kwargs = dict(max_new_tokens=10, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        ref = plain.generate(prompt, use_past_kv_cache=True, **kwargs)
        assert torch.equal(kept.generate(prompt, use_past_kv_cache=True, **kwargs), ref)
        assert torch.equal(kept.generate(prompt, use_past_kv_cache=False, **kwargs), ref)


def test_folded_from_pretrained_is_exact(ckpt: tuple[str, dict]) -> None:
    # fold_ln with FP8 weights folds after each dequantisation: the dequantise-on-load fold's exact operations.
    plain, kept = load(ckpt[0], False, processed=True), load(ckpt[0], True, processed=True)
    assert plain.cfg.normalization_type == kept.cfg.normalization_type == "RMSPre"
    with torch.no_grad():
        torch.testing.assert_close(kept(tokens(ckpt[1])), plain(tokens(ckpt[1])), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="from_pretrained_no_processing"):
        kept.process_weights_()


def test_bfloat16_equals_dequantised_bfloat16(ckpt: tuple[str, dict]) -> None:
    plain32 = load(ckpt[0], False)
    plain, kept = load(ckpt[0], False, torch.bfloat16), load(ckpt[0], True, torch.bfloat16)
    assert kept.blocks[2].mlp.W_router.dtype == torch.float32
    assert kept.blocks[2].mlp.e_score_correction_bias.dtype == torch.float32
    toks = tokens(ckpt[1])
    with torch.no_grad():
        ref32, ref, ours = plain32(toks), plain(toks).float(), kept(toks).float()
    own_noise = (ref - ref32).abs().max().item()  # the bf16 model's own rounding against float32
    diff = (ours - ref).abs().max().item()
    assert own_noise > 0 and diff <= own_noise
    assert diff == 0.0  # measured: the same products cast the same way (docs/models-deepseek.md)


def test_routed_experts_dequantised_only_when_used_and_in_chunks(
    ckpt: tuple[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = load(ckpt[0], True)
    toks = tokens(ckpt[1], (1, 3), seed=2)  # 3 tokens x top-3: at most 9 of 8 experts, usually fewer
    with torch.no_grad():
        ref = kept(toks)
        _, cache = kept.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_expert_indices"))
    calls: list[torch.Tensor | None] = []
    original = Fp8Weight.dequantize

    def spy(self: Fp8Weight, stored: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "experts":
            calls.append(experts)
        return original(self, stored, experts)

    monkeypatch.setattr(Fp8Weight, "dequantize", spy)
    kept.cfg.fp8_experts_per_chunk = 2
    with torch.no_grad():
        out = kept(toks)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert calls and all(ids is not None and len(ids) <= 2 for ids in calls)  # never the whole stack
    used = {layer: set(cache[f"blocks.{layer}.mlp.hook_expert_indices"].flatten().tolist()) for layer in (2, 3)}
    dequantised = set(torch.cat([ids for ids in calls if ids is not None]).tolist())
    assert dequantised == used[2] | used[3] and len(calls) == 3 * sum((len(u) + 1) // 2 for u in used.values())


def test_block_bytes_ratios(pair: tuple[HookedTransformer, HookedTransformer], ckpt: tuple[str, dict]) -> None:
    plain, kept = pair
    bf16 = load(ckpt[0], False, torch.bfloat16)
    kept_bytes = resident_bytes(kept.blocks)
    assert kept_bytes <= 0.30 * resident_bytes(plain.blocks)
    assert kept_bytes <= 0.55 * resident_bytes(bf16.blocks)


def test_state_dict_round_trips(pair: tuple[HookedTransformer, HookedTransformer], ckpt: tuple[str, dict]) -> None:
    plain, kept = pair
    state = kept.state_dict()
    assert state["blocks.2.mlp.experts.parametrizations.W_gate.original"].dtype == FP8
    other = load(ckpt[0], True)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
        other.load_state_dict(state)
        toks = tokens(ckpt[1])
        torch.testing.assert_close(other(toks), kept(toks), atol=0, rtol=0)
        # The dequantised state dict under plain names loads strictly into a model loaded without keep_fp8.
        fresh = load(ckpt[0], False)
        fresh.load_state_dict(dequantized_state_dict(kept), strict=True)
        torch.testing.assert_close(fresh(toks), plain(toks), atol=0, rtol=0)


def test_keep_fp8_parameters_own_their_storage(ckpt: tuple[str, dict], opened_shards: list[str]) -> None:
    shards = {str(p.resolve()) for p in Path(ckpt[0]).glob("*.safetensors")}
    kept = load(ckpt[0], True)
    assert len(opened_shards) == 4
    with open("/proc/self/maps") as maps:
        mapped = {parts[5] for parts in (line.split() for line in maps) if len(parts) >= 6}
    assert not mapped & shards
    assert all(t.device.type == "cpu" for t in [*kept.parameters(), *kept.buffers()])


def test_hooked_sae_transformer_keep_fp8(ckpt: tuple[str, dict]) -> None:
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer.from_pretrained(ckpt[0], device="cpu", keep_fp8=True, progress=False)
    assert isinstance(model, HookedSAETransformer) and has_fp8_weights(model)
    plain = HookedTransformer.from_pretrained(ckpt[0], device="cpu", progress=False)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens(ckpt[1])), plain(tokens(ckpt[1])), atol=1e-5, rtol=0)


def test_unknown_keyword_is_an_error(ckpt: tuple[str, dict]) -> None:
    with pytest.raises(TypeError, match="keep_fp9"):
        HookedTransformer.from_pretrained_no_processing(ckpt[0], device="cpu", keep_fp9=True)


def test_keep_fp8_on_unquantised_checkpoint_is_plain(tmp_path: Path) -> None:
    write_tiny_checkpoint(config=tiny_config(), seed=1, storage="bfloat16", folder=tmp_path / "bf16")
    model = HookedTransformer.from_pretrained_no_processing(str(tmp_path / "bf16"), device="cpu", keep_fp8=True)
    assert not has_fp8_weights(model) and model.cfg.keep_fp8 is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(28, 48), (3, 40, 33), (256, 128)])
def test_fused_dequantisation_is_bit_identical(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    # The path used off the CPU (e4m3 -> bf16, one mixed-dtype multiply into `dtype`) against the CPU path and an
    # explicit per-block loop, including partial blocks, stacked experts and a row subset (kv_b_proj's halves).
    from r1_plugin.models.deepseek_v3.fp8 import dequantize_stacked, quantize_blockwise

    g = torch.Generator().manual_seed(0)
    mats = torch.randn(*shape, generator=g).mul(3).reshape(-1, *shape[-2:])
    pairs = [quantize_blockwise(m, (16, 16)) for m in mats]
    q = torch.stack([p[0] for p in pairs]).reshape(shape)
    s = torch.stack([p[1] for p in pairs]).reshape(*shape[:-2], *pairs[0][1].shape)
    rows = torch.arange(shape[-2])[1::3]
    for row_block in (None, rows // 16):
        weight = q if row_block is None else q.index_select(-2, rows)
        fused = dequantize_stacked(weight, s, (16, 16), dtype, row_block, fused=True)
        plain = dequantize_stacked(weight, s, (16, 16), dtype, row_block, fused=False)
        assert fused.dtype == plain.dtype == dtype
        assert torch.equal(fused.view(torch.uint8), plain.view(torch.uint8))
        flat_w, flat_s = weight.reshape(-1, *weight.shape[-2:]), s.reshape(-1, *s.shape[-2:])
        ref = torch.stack([
            torch.stack([
                w[r].float() * sc[(rows[r] if row_block is not None else r) // 16].repeat_interleave(16)[: w.shape[-1]]
                for r in range(w.shape[0])
            ]) for w, sc in zip(flat_w, flat_s)
        ]).reshape(weight.shape).to(dtype)
        assert torch.equal(plain.view(torch.uint8), ref.view(torch.uint8))
