"""Harvest never doubles BOS on chat text (every tokenizer family), and leaves BOS and special tokens out of the
SAE's input and the top-k by default, also out of a batch top-k SAE's k x n budget (checked against an oracle)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from transformer_lens import HookedTransformer

from r1_plugin.chat import format_r1_prompt, r1_chat_tokens
from r1_plugin.features import harvest, kept_token_mask, merge_shards, special_token_ids
from r1_plugin.saes import to_batch_topk
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

HOOK = "blocks.0.hook_resid_post"
FAMILIES = {
    "r1": "deepseek-ai/DeepSeek-R1",
    "qwen": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "llama": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
}
QUESTIONS = ["What is 2+2?", "Okay, so the sum of 12 and 30.", "Hmm.", "Wait, let me check again: 7 * 6 = 42."]
TOP_K, K = 5, 3


def load(family: str) -> HookedTransformer:
    repo = FAMILIES[family]
    if family == "r1":
        write_tiny_checkpoint(repo, tiny_config(num_hidden_layers=2), seed=2)
    else:
        write_tiny_distill(repo, seed=2)
    return HookedTransformer.from_pretrained_no_processing(repo, device="cpu")


def batch_topk_sae(d_in: int) -> TopKSAE:
    cfg = TopKSAEConfig(d_in=d_in, d_sae=32, k=K, apply_b_dec_to_input=False, metadata=SAEMetadata(hook_name=HOOK))
    sae = TopKSAE(cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.1)
    return to_batch_topk(sae).eval()


def harvested_tokens(shards: Path) -> list[list[int]]:
    rows = duckdb.sql(
        f"SELECT sequence_id, token FROM read_parquet('{shards}/*/tokens-*.parquet') ORDER BY sequence_id, token_idx"
    ).fetchall()
    out: dict[int, list[int]] = {}
    for seq, tok in rows:
        out.setdefault(seq, []).append(tok)
    return [out[s] for s in sorted(out)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chat_text_gets_exactly_one_bos(hf_cache: object, tmp_path: Path, family: str) -> None:
    model = load(family)
    bos = model.tokenizer.bos_token_id
    prompts = [format_r1_prompt(model, q) for q in QUESTIONS[:2]] + ["Okay, so."]
    assert all(p.startswith(model.tokenizer.bos_token) for p in prompts[:2])
    harvest(model, batch_topk_sae(model.cfg.d_model), prompts, tmp_path, top_k=TOP_K, progress=False)
    got = harvested_tokens(tmp_path)
    for question, ids in zip(QUESTIONS[:2], got, strict=False):
        assert ids == r1_chat_tokens(model, question)[0].tolist()
    assert got[2] == model.to_tokens("Okay, so.")[0].tolist()
    for ids in got:
        assert ids[0] == bos and ids.count(bos) == 1


def oracle_rows(model: HookedTransformer, sae: TopKSAE, prompts: list[str], batch_size: int,
                special: set[int]) -> dict[tuple[int, int, int], float]:
    """(feature, sequence, token) -> strength: each prompt run alone (no padding), batch top-k written out over the
    batch's non-special tokens, then each feature's TOP_K strongest by (strength, sequence, token)."""
    W, b = sae.W_enc.detach(), sae.b_enc.detach()
    entries: list[tuple[float, int, int, int]] = []
    for b0 in range(0, len(prompts), batch_size):
        rows, where = [], []
        for seq in range(b0, min(b0 + batch_size, len(prompts))):
            ids = r1_chat_tokens(model, QUESTIONS[seq])[0]
            with torch.no_grad():
                _, cache = model.run_with_cache(ids[None], names_filter=HOOK)
            for pos, tok in enumerate(ids.tolist()):
                if tok not in special:
                    rows.append(torch.relu(cache[HOOK][0, pos] @ W + b))
                    where.append((seq, pos))
        flat = torch.stack(rows).flatten()
        for i in torch.argsort(flat, descending=True, stable=True)[: K * len(rows)].tolist():
            if flat[i] > 0:
                seq, pos = where[i // W.shape[1]]
                entries.append((float(flat[i]), i % W.shape[1], seq, pos))
    best: dict[tuple[int, int, int], float] = {}
    for fid in {e[1] for e in entries}:
        mine = sorted((e for e in entries if e[1] == fid), key=lambda e: (-e[0], e[2], e[3]))[:TOP_K]
        best.update({(fid, seq, pos): v for v, _, seq, pos in mine})
    return best


def test_special_tokens_take_no_part_in_batch_topk(hf_cache: object, tmp_path: Path) -> None:
    model = load("qwen")
    sae = batch_topk_sae(model.cfg.d_model)
    prompts = [format_r1_prompt(model, q) for q in QUESTIONS]
    special = set(special_token_ids(model.tokenizer))
    assert model.tokenizer.bos_token_id in special and model.tokenizer.convert_tokens_to_ids("<think>") not in special
    harvest(model, sae, prompts, tmp_path / "shards", top_k=TOP_K, batch_size=2, progress=False)
    merge_shards(tmp_path / "shards", tmp_path / "db.ddb")
    got = {(f, s, t): v for f, s, t, v in duckdb.connect(str(tmp_path / "db.ddb"), read_only=True).execute(
        "SELECT feature_id, sequence_id, token_idx, strength FROM activations").fetchall()}
    expected = oracle_rows(model, sae, prompts, 2, special)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    tokens = harvested_tokens(tmp_path / "shards")
    assert not any(tokens[s][t] in special for _, s, t in got)


def test_exclude_special_false_keeps_them(hf_cache: object, tmp_path: Path) -> None:
    model = load("qwen")
    sae = batch_topk_sae(model.cfg.d_model)
    prompts = [format_r1_prompt(model, q) for q in QUESTIONS]
    harvest(model, sae, prompts, tmp_path, top_k=TOP_K, batch_size=2, exclude_special=False, progress=False)
    rows = duckdb.sql(f"SELECT sequence_id, token_idx FROM read_parquet('{tmp_path}/*/activations.parquet')")
    tokens = harvested_tokens(tmp_path)
    special = set(special_token_ids(model.tokenizer))
    assert any(tokens[s][t] in special for s, t in rows.fetchall())


def test_read_out_mask_for_a_padded_chat_batch(hf_cache: object) -> None:
    """kept_token_mask + encode(attention_mask=) on a padded batch equals encoding only the kept tokens."""
    model = load("qwen")
    sae = batch_topk_sae(model.cfg.d_model)
    tok = model.tokenizer
    rows = [r1_chat_tokens(model, q)[0] for q in QUESTIONS[:3]]
    width = max(len(r) for r in rows)
    tokens = torch.full((3, width), tok.pad_token_id)
    attention = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], attention[i, : len(r)] = r, 1
    kept = kept_token_mask(tok, tokens, attention)
    special = set(special_token_ids(tok))
    assert kept.tolist() == [[bool(attention[i, j]) and int(tokens[i, j]) not in special for j in range(width)]
                             for i in range(3)]
    assert not kept[:, 0].any()  # BOS
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, attention_mask=attention, names_filter=HOOK)
        acts = sae.encode(cache[HOOK], attention_mask=kept)
        alone = sae.encode(cache[HOOK][kept])
    assert torch.equal(acts[kept], alone) and not acts[~kept].any()
