"""Streaming loader: FP8 block dequantisation, sharded index files, first_n_layers, device plan, errors."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.models.deepseek_v3 import checkpoint_files, loading
from r1_plugin.models.deepseek_v3.fp8 import dequantize_blockwise, quantize_blockwise
from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

NAME = "deepseek-ai/DeepSeek-V3-0324"


def reference_dequant(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Independent float32 dequantisation: an explicit loop over the (possibly partial) blocks."""
    out = torch.empty(weight.shape, dtype=torch.float32)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            out[rows, cols] = weight[rows, cols].to(torch.float32) * scale_inv[i, j].item()
    return out


def dequantized(tensors: dict[str, torch.Tensor], block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The exact float32 model the FP8 checkpoint encodes (published names, scales dropped)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv")
        out[name] = reference_dequant(t, scale, block) if scale is not None else t.float()
    return out


@pytest.mark.parametrize("shape", [(576, 7168 // 14), (28, 48), (40, 33), (16, 16)])
def test_dequantize_partial_blocks(shape: tuple[int, int]) -> None:
    block = (128, 128) if shape[0] == 576 else (16, 16)
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    q, scale_inv = quantize_blockwise(w, block)
    assert scale_inv.shape == (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))
    ours = dequantize_blockwise(q, scale_inv, block, torch.float32)
    torch.testing.assert_close(ours, reference_dequant(q, scale_inv, block), atol=0, rtol=0)
    torch.testing.assert_close(ours, w, atol=0.07 * w.abs().max().item(), rtol=0)  # e4m3 keeps ~3 mantissa bits


def test_dequantize_rejects_wrong_scale_grid() -> None:
    q, scale_inv = quantize_blockwise(torch.randn(28, 48), (16, 16))
    with pytest.raises(ValueError, match="weight_block_size"):
        dequantize_blockwise(q, scale_inv, (8, 16))


@pytest.fixture(scope="module")
def fp8_checkpoint(hf_cache: object):
    # kv_lora_rank 20 + rope 8 = 28 rows and d_model 48: partial 16x16 blocks, like R1's 576-row kv_a_proj.
    config = tiny_config(num_hidden_layers=4, first_k_dense_replace=2)
    return write_tiny_checkpoint(NAME, config, seed=3, storage="fp8", n_shards=4, block_size=(16, 16))


def test_fp8_sharded_checkpoint_matches_hf_on_exact_dequantisation(
    fp8_checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = fp8_checkpoint
    assert any(k.endswith("kv_a_proj_with_mqa.weight_scale_inv") for k in ck.tensors)
    open_now: list[str] = []
    opened: list[str] = []
    original = checkpoint_files.open_safetensors

    @contextmanager
    def spy(path: Path):
        open_now.append(path.name)
        opened.append(path.name)
        assert len(open_now) == 1, f"shards open at once: {open_now}"
        with original(path) as handle:
            yield handle
        open_now.pop()

    monkeypatch.setattr(checkpoint_files, "open_safetensors", spy)
    model = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")
    assert sorted(set(opened)) == sorted(n for n in ck.files if n.endswith(".safetensors"))
    assert len(opened) == 4  # each shard opened exactly once (every scale lives next to its weight)

    hf = hf_reference_model(ck.config, dequantized(ck.tensors, (16, 16)))
    tokens = torch.randint(2, ck.config["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


def test_first_n_layers_reads_only_needed_shards(fp8_checkpoint, opened_shards: list[str]) -> None:
    ck = fp8_checkpoint
    full = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu")
    opened_shards.clear()  # only the truncated load's reads count
    part = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu", first_n_layers=2)
    assert part.cfg.n_layers == 2 and len(part.blocks) == 2
    # Shards holding only layers >= 2 and no embed/norm/lm_head tensors are never opened.
    index = loading.CheckpointFiles(NAME, {}).weight_map()
    needed = {s for k, s in index.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2}
    assert set(opened_shards) == needed and len(needed) < 4
    tokens = torch.randint(2, ck.config["vocab_size"], (1, 10))
    with torch.no_grad():
        _, full_cache = full.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        resid = part(tokens, stop_at_layer=2)
    torch.testing.assert_close(resid, full_cache["blocks.1.hook_resid_post"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="first_n_layers"):
        HookedTransformer.from_pretrained_no_processing(NAME, device="cpu", first_n_layers=9)


def test_bfloat16_checkpoint_and_dtype(hf_cache: object) -> None:
    ck = write_tiny_checkpoint(NAME, tiny_config(), seed=11, storage="bfloat16")
    model = HookedTransformer.from_pretrained_no_processing(NAME, device="cpu", dtype=torch.bfloat16)
    assert model.W_E.dtype == torch.bfloat16
    assert model.blocks[1].mlp.e_score_correction_bias.dtype == torch.float32
    hf = hf_reference_model(ck.config, {k: v.float() for k, v in ck.tensors.items()})
    tokens = torch.randint(2, ck.config["vocab_size"], (1, 8))
    with torch.no_grad():
        ours, ref = model(tokens).float(), hf(tokens).logits
    assert (ours - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 arithmetic vs float32 reference


def test_local_folder_loads(tmp_path: Path) -> None:
    ck = write_tiny_checkpoint(config=tiny_config(q_lora_rank=None), seed=13, folder=tmp_path / "ckpt", n_shards=2)
    model = HookedTransformer.from_pretrained_no_processing(str(tmp_path / "ckpt"), device="cpu")
    hf = hf_reference_model(ck.config, ck.tensors)
    tokens = torch.randint(2, ck.config["vocab_size"], (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    write_tiny_checkpoint(config=tiny_config(), seed=1, folder=tmp_path / "broken")
    tensors = load_file(tmp_path / "broken" / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(tensors, tmp_path / "broken" / "model.safetensors")
    with pytest.raises(ValueError, match=r"lacks tensors.*blocks\.1\.mlp\.experts\.W_in.*5"):
        HookedTransformer.from_pretrained_no_processing(str(tmp_path / "broken"), device="cpu")


def test_device_plan_follows_transformer_lens_split() -> None:
    cfg = SimpleNamespace(device="cuda", n_devices=2, n_layers=4)
    assert loading.target_device("embed.W_E", cfg) == torch.device("cuda", 0)
    assert [loading.target_device(f"blocks.{i}.attn.W_O", cfg).index for i in range(4)] == [0, 0, 1, 1]
    assert loading.target_device("unembed.W_U", cfg) == torch.device("cuda", 1)
    assert loading.target_device("ln_final.w", cfg) == torch.device("cuda", 1)


def test_non_deepseek_names_fall_through() -> None:
    assert loading.deepseek_official_name("gpt2") is None
    assert loading.deepseek_official_name("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B") is None
    assert loading.deepseek_official_name("r1") == "deepseek-ai/DeepSeek-R1"


def mapped_files() -> set[str]:
    """Paths of the files this process has memory-mapped (from /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        return {parts[5] for parts in (line.split() for line in maps) if len(parts) >= 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("storage", ["bfloat16", "fp8"])
def test_parameters_own_their_storage_and_one_shard_is_mapped_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str
) -> None:
    # bf16 storage loaded as bf16: `.to(dtype)` is a no-op there, the case where a parameter would alias the mmap.
    folder = tmp_path / storage
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=3), seed=17, storage=storage, n_shards=3, folder=folder)
    shards = {str(p.resolve()) for p in folder.glob("*.safetensors")}
    assert len(shards) == 3
    mapped_at_open: list[set[str]] = []
    original = checkpoint_files.open_safetensors

    @contextmanager
    def spy(path: Path):
        mapped_at_open.append(mapped_files() & shards)  # earlier shards must be unmapped by now
        with original(path) as handle:
            yield handle

    monkeypatch.setattr(checkpoint_files, "open_safetensors", spy)
    model = HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu", dtype=torch.bfloat16)
    assert len(mapped_at_open) >= 3 and all(not m for m in mapped_at_open), mapped_at_open
    assert not mapped_files() & shards  # nothing in the model keeps a view of a shard's memory map
    regions = []
    with open("/proc/self/maps") as maps:
        for parts in (line.split() for line in maps):
            if len(parts) >= 6 and parts[5].endswith(".safetensors"):
                start, end = (int(a, 16) for a in parts[0].split("-"))
                regions.append((start, end))
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        ptr = tensor.untyped_storage().data_ptr()
        assert not any(start <= ptr < end for start, end in regions), f"{name} is backed by a safetensors mmap"
    assert model.W_E.dtype == torch.bfloat16


def test_loader_copies_into_freshly_allocated_storage() -> None:
    source = torch.randn(6, 4)
    out = loading.materialise(source, torch.float32, torch.device("cpu"))
    assert out.untyped_storage().data_ptr() != source.untyped_storage().data_ptr() and torch.equal(out, source)
    transposed = loading.materialise(source.t(), torch.bfloat16, torch.device("cpu"))
    assert transposed.shape == (4, 6) and transposed.t().is_contiguous()  # the checkpoint's layout is kept
    assert torch.equal(transposed, source.t().to(torch.bfloat16))
    # kv_b_proj's key half: a strided slice of [head, nope + v, r]; the copy is dense, in [head, nope, r] order.
    kv_b = torch.randn(4 * (6 + 5), 7)
    w_k_b = kv_b.view(4, 11, 7)[:, :6].transpose(1, 2)
    copied = loading.materialise(w_k_b, torch.float32, torch.device("cpu"))
    assert torch.equal(copied, w_k_b) and copied.untyped_storage().nbytes() == w_k_b.numel() * 4
    assert copied.transpose(1, 2).is_contiguous()


def test_tied_embeddings_centering_unembed_leaves_the_embedding_alone(tmp_path: Path) -> None:
    """A tied checkpoint without lm_head.weight: W_U is W_E.T; centring W_U must not centre the embedding too."""
    from safetensors.torch import load_file, save_file

    write_tiny_checkpoint(config=tiny_config(tie_word_embeddings=True), seed=5, folder=tmp_path / "tied")
    tensors = load_file(tmp_path / "tied" / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "tied" / "model.safetensors")
    plain = HookedTransformer.from_pretrained_no_processing(str(tmp_path / "tied"), device="cpu")
    centred = HookedTransformer.from_pretrained(str(tmp_path / "tied"), device="cpu", fold_ln=False)
    torch.testing.assert_close(centred.W_E, tensors["model.embed_tokens.weight"], atol=0, rtol=0)
    tokens = torch.randint(2, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(tokens).log_softmax(-1), centred(tokens).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
