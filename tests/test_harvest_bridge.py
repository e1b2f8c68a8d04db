"""Harvest on a TransformerBridge (#19): the same feature DB as on the HookedTransformer from the same weights,
with and without compatibility mode, and with the SAE's hook spelled as the alias or the canonical name; the
forward in query chunks over transformers' KV cache (memory linear in prompt length) as on a HookedTransformer."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch

from r1_plugin.drive import driver
from r1_plugin.features import harvest, merge_shards
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

sae_lens = pytest.importorskip("sae_lens")  # the SAE is a SAELens one (TransformerLens 4 runs have no SAELens)

pytestmark = pytest.mark.bridge

PROMPTS: list[str | list[int]] = [
    "Okay, so the user asked about the sum of 12 and 30.",
    "Wait, that is not right. Let me check again, step by step, from the top.",
    "Hmm.",
    [5, 17, 42, 99, 3, 250, 7],
    "Alternatively, we could backtrack to the previous step and try again with a different idea.",
    "So the answer is 42.",
]


@pytest.fixture(scope="module", params=["qwen", "llama"])
def models(request, hf_cache):
    """(HookedTransformer, TransformerBridge, TransformerBridge in compatibility mode) from one tiny distill."""
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    name = {"qwen": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "llama": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"}
    _, folder = write_tiny_distill(name[request.param])
    hooked = HookedTransformer.from_pretrained_no_processing(name[request.param], device="cpu")
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    compat = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    compat.enable_compatibility_mode()
    return hooked, bridge, compat


def random_sae(d_model: int, hook: str):
    cfg = sae_lens.StandardSAEConfig(d_in=d_model, d_sae=32, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = hook
    sae = sae_lens.StandardSAE(cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.2 - 0.3)
    return sae.eval()


def db_tables(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in ("tokens", "autointerp")}
        out["activations"] = con.execute(
            "SELECT feature_id, sequence_id, token_idx, strength FROM activations "
            "ORDER BY feature_id, strength DESC, sequence_id, token_idx").fetchall()
        # model_name is what each model calls itself (a bridge booted from a folder: the folder)
        out["harvest_info"] = con.execute("SELECT * FROM harvest_info WHERE key <> 'model_name' ORDER BY ALL").fetchall()
        return out
    finally:
        con.close()


def assert_same_db(got: dict[str, list[tuple]], want: dict[str, list[tuple]], info: bool = True) -> None:
    assert got["tokens"] == want["tokens"] and got["autointerp"] == want["autointerp"]
    assert len(got["activations"]) == len(want["activations"]) > 0
    assert [r[:3] for r in got["activations"]] == [r[:3] for r in want["activations"]]
    # float tolerance: the bridge runs transformers' modules, the HookedTransformer its own (same math, ~1e-7)
    assert [r[3] for r in got["activations"]] == pytest.approx([r[3] for r in want["activations"]], rel=1e-5, abs=1e-6)
    if info:
        assert got["harvest_info"] == want["harvest_info"]


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_out"])
def test_harvest_on_a_bridge_gives_the_hooked_db(models, tmp_path: Path, hook: str) -> None:
    hooked, bridge, compat = models
    sae = random_sae(hooked.cfg.d_model, hook)
    dbs = {}
    runs = (("hooked", hooked, 8), ("bridge", bridge, 8), ("compat", compat, 8), ("bridge-whole", bridge, None))
    for kind, model, chunk in runs:
        out = tmp_path / kind
        result = harvest(model, sae, PROMPTS, out, top_k=5, batch_size=4, chunk_size=chunk, progress=False)
        assert result.complete and result.tokens > 0
        dbs[kind] = db_tables(merge_shards(out, tmp_path / f"{kind}.ddb"))
    assert_same_db(dbs["bridge"], dbs["hooked"])  # chunks of 8 over transformers' cache (prompts of 1-18 tokens)
    assert_same_db(dbs["compat"], dbs["hooked"])
    assert_same_db(dbs["bridge-whole"], dbs["bridge"])  # one forward per batch: the same DB


def padded_batch(lengths: tuple[int, ...]) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Random prompts of `lengths` and their right-padded batch (ids, attention mask)."""
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in lengths]
    tokens = torch.zeros((len(ids), max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
    return ids, tokens, mask


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.0.hook_resid_mid", "blocks.1.hook_out"])
def test_chunked_bridge_activations_equal_one_forward(models, hook: str) -> None:
    """On the bridge (and in compatibility mode) the chunked activations equal one forward's and the
    HookedTransformer's on each prompt alone. Float tolerance (1e-5; measured ~5e-7 for |activations| ~2): the
    chunks' attention matmuls have other shapes, and the HookedTransformer runs its own modules."""
    hooked, bridge, compat = models
    ids, tokens, mask = padded_batch((37, 20, 9))  # rows end inside different chunks of 8
    valid = mask.bool()
    for model in (bridge, compat):
        with torch.inference_mode():
            whole = driver(model).hook_activations(tokens, mask, hook, None)
            chunked = driver(model).hook_activations(tokens, mask, hook, 8)
            assert chunked.shape == whole.shape == (*tokens.shape, hooked.cfg.d_model)
            torch.testing.assert_close(chunked[valid], whole[valid], rtol=1e-5, atol=1e-5)
            for row, seq in enumerate(ids):  # the oracle: the HookedTransformer, one unpadded prompt
                _, cache = hooked.run_with_cache(torch.tensor([seq]), names_filter=driver(hooked).hook_name(hook))
                want = cache[driver(hooked).hook_name(hook)][0]
                torch.testing.assert_close(chunked[row, : len(seq)], want, rtol=1e-5, atol=1e-5)


def test_chunked_bridge_holds_chunk_rows_of_attention(models) -> None:
    """What makes memory linear on the bridge too: attention is computed for 8 query rows at a time against the
    keys so far (transformers' cache), and blocks after the hook's never run."""
    _, bridge, _ = models
    drive = driver(bridge)
    patterns = drive.pattern_hook_names()
    shapes: dict[int, list[tuple[int, ...]]] = {0: [], 1: []}

    def recorder(layer: int):
        return lambda pattern, hook: shapes[layer].append(tuple(pattern.shape))

    _, tokens, mask = padded_batch((37, 20, 9))
    with torch.inference_mode(), drive.hooks([(patterns[layer], recorder(layer)) for layer in shapes]):
        drive.hook_activations(tokens, mask, "blocks.0.hook_resid_post", 8)
    assert [s[-2:] for s in shapes[0]] == [(8, 8), (8, 16), (8, 24), (8, 32), (5, 37)]
    assert shapes[1] == []  # stopped after block 0
    with torch.inference_mode(), drive.hooks([(patterns[layer], recorder(layer)) for layer in shapes]):
        drive.hook_activations(tokens, mask, "blocks.0.hook_resid_post", None)
    assert shapes[0][-1][-2:] == (37, 37) and shapes[1] == []  # one forward: the full square


def test_alias_and_canonical_hook_harvest_the_same(models, tmp_path: Path) -> None:
    hooked = models[0]
    dbs = []
    for hook in ("blocks.1.hook_resid_post", "blocks.1.hook_out"):
        out = tmp_path / hook
        harvest(hooked, random_sae(hooked.cfg.d_model, hook), PROMPTS, out, top_k=5, progress=False)
        dbs.append(db_tables(merge_shards(out, tmp_path / f"{hook}.ddb")))
    assert_same_db(dbs[0], dbs[1], info=False)  # harvest_info records the hook as the SAE spells it
