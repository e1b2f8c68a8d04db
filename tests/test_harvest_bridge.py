"""Harvest on a TransformerBridge (#19): the same feature DB as on the HookedTransformer from the same weights,
with and without compatibility mode, and with the SAE's hook spelled as the alias or the canonical name."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch

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
    for kind, model in (("hooked", hooked), ("bridge", bridge), ("compat", compat)):
        out = tmp_path / kind
        result = harvest(model, sae, PROMPTS, out, top_k=5, batch_size=4, chunk_size=8, progress=False)
        assert result.complete and result.tokens > 0
        dbs[kind] = db_tables(merge_shards(out, tmp_path / f"{kind}.ddb"))
    assert_same_db(dbs["bridge"], dbs["hooked"])
    assert_same_db(dbs["compat"], dbs["hooked"])


def test_alias_and_canonical_hook_harvest_the_same(models, tmp_path: Path) -> None:
    hooked = models[0]
    dbs = []
    for hook in ("blocks.1.hook_resid_post", "blocks.1.hook_out"):
        out = tmp_path / hook
        harvest(hooked, random_sae(hooked.cfg.d_model, hook), PROMPTS, out, top_k=5, progress=False)
        dbs.append(db_tables(merge_shards(out, tmp_path / f"{hook}.ddb")))
    assert_same_db(dbs[0], dbs[1], info=False)  # harvest_info records the hook as the SAE spells it
