"""Harvest's forward in query chunks over the KV cache (memory linear in prompt length, #20 item 7): the same
activations and the same feature DB as one full forward, on a distill and on the R1 architecture."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch
from sae_lens import StandardSAEConfig
from sae_lens.saes.standard_sae import StandardSAE
from transformer_lens import HookedTransformer

from r1_plugin.drive import driver
from r1_plugin.features import harvest, merge_shards

CHUNK = 48
LENGTHS = (200, 131, 57)  # a right-padded batch: rows end inside different chunks


@pytest.fixture(scope="module", params=["qwen", "r1"])
def model(request, hf_cache) -> HookedTransformer:
    """A tiny random distill (Qwen2, GQA) and a tiny R1 (MLA + MoE, latent KV cache)."""
    if request.param == "qwen":
        from r1_plugin.testing.distill_checkpoints import write_tiny_distill

        name = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        write_tiny_distill(name)
    else:
        from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

        name = "deepseek-ai/DeepSeek-R1"
        write_tiny_checkpoint(name, tiny_config(), seed=2)
    return HookedTransformer.from_pretrained_no_processing(name, device="cpu")


def random_sae(model: HookedTransformer, hook: str) -> StandardSAE:
    cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=32, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.2 - 0.3)
    return sae.eval()


def prompts(model: HookedTransformer) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    vocab = min(model.cfg.d_vocab, 300)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in LENGTHS]


def padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    tokens = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    return tokens, mask


@pytest.mark.parametrize("hook_at", ["blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"])
def test_chunked_activations_equal_one_forward(model, hook_at):
    """Float tolerance, not bit equality: chunk c's attention is a [chunk, pos] matmul instead of a row block
    of the [pos, pos] one, so BLAS may sum in another order (a few ulp in float32)."""
    tokens, mask = padded(prompts(model))
    with torch.inference_mode():
        whole = driver(model).hook_activations(tokens, mask, hook_at, None)
        chunked = driver(model).hook_activations(tokens, mask, hook_at, CHUNK)
        # oracle independent of harvest: each prompt alone, unpadded, one forward, read with run_with_cache
        for row, seq in enumerate(prompts(model)):
            _, cache = model.run_with_cache(torch.tensor([seq]), names_filter=hook_at)
            torch.testing.assert_close(chunked[row, : len(seq)], cache[hook_at][0], rtol=1e-5, atol=1e-5)
    valid = mask.bool()
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked[valid], whole[valid], rtol=1e-5, atol=1e-5)


def test_chunked_forward_holds_chunk_rows_of_attention(model):
    """What makes memory linear: no layer computes more than CHUNK query rows of attention scores at once."""
    tokens, mask = padded(prompts(model))
    shapes: list[tuple[int, ...]] = []

    def record(scores: torch.Tensor, hook) -> None:
        shapes.append(tuple(scores.shape))

    with torch.inference_mode(), model.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", record)]):
        driver(model).hook_activations(tokens, mask, "blocks.1.hook_resid_post", CHUNK)
    n_chunks = -(-tokens.shape[1] // CHUNK)
    assert len(shapes) == n_chunks
    assert max(s[-2] for s in shapes) == CHUNK and [s[-1] for s in shapes][-1] == tokens.shape[1]
    shapes.clear()
    with torch.inference_mode(), model.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", record)]):
        driver(model).hook_activations(tokens, mask, "blocks.1.hook_resid_post", None)
    assert shapes[0][-2:] == (tokens.shape[1], tokens.shape[1])  # the unchunked run: the full square


def test_chunked_harvest_gives_the_same_db(model, tmp_path: Path):
    sae = random_sae(model, "blocks.1.hook_resid_post")
    ids = prompts(model) + [list(reversed(p)) for p in prompts(model)]
    dbs = {}
    for chunk in (None, CHUNK):
        out = tmp_path / f"chunk-{chunk}"
        harvest(model, sae, ids, out, top_k=5, batch_size=3, chunk_size=chunk, progress=False)
        dbs[chunk] = merge_shards(out, tmp_path / f"{chunk}.ddb")
    tables = {}
    for chunk, path in dbs.items():
        con = duckdb.connect(str(path), read_only=True)
        tables[chunk] = {
            "tokens": con.execute("SELECT * FROM tokens ORDER BY ALL").fetchall(),
            "acts": con.execute("SELECT feature_id, sequence_id, token_idx, strength FROM activations "
                                "ORDER BY feature_id, strength DESC, sequence_id, token_idx").fetchall(),
        }
        con.close()
    assert tables[None]["tokens"] == tables[CHUNK]["tokens"]
    whole, chunked = tables[None]["acts"], tables[CHUNK]["acts"]
    assert len(whole) == len(chunked) > 0
    assert [r[:3] for r in whole] == [r[:3] for r in chunked]  # same features, prompts, positions, ranks
    assert [r[3] for r in chunked] == pytest.approx([r[3] for r in whole], rel=1e-5, abs=1e-6)


def test_chunk_size_is_checked(model, tmp_path: Path):
    sae = random_sae(model, "blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="chunk_size"):
        harvest(model, sae, [[1, 2, 3]], tmp_path, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="min_strength"):
        harvest(model, sae, [[1, 2, 3]], tmp_path, min_strength=float("nan"), progress=False)
    assert not any(tmp_path.iterdir())  # nothing written for a bad call
