"""Harvesting a tiny model + SAE into Goodfire's schema: round-trip, brute-force equality, resume, shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
import torch
from sae_lens import StandardSAEConfig
from sae_lens.saes.standard_sae import StandardSAE
from transformer_lens import HookedTransformer

from r1_plugin.drive import HookNameError
from r1_plugin.features import FeatureDB, FeatureDBError, harvest, merge_shards
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
HOOK = "blocks.0.hook_resid_post"
TOP_K = 6
PROMPTS: list[str | list[int]] = [
    "Okay, so the user asked about the sum of 12 and 30.",
    "Wait, that is not right. Let me check again.",
    "Okay, so I need to find the subset.",
    "The beacon 4, section 3.",
    "Hmm.",
    [5, 17, 42, 99, 3, 250, 7],  # token ids are used as given
    "Earlier I computed 7 * 6 = 42, so the result is 42.",
    "Let me verify: 42 / 6 = 7. Yes.",
    "Alternatively, we could backtrack to the previous step and try again with a different idea.",
    "So the answer is 5.",
    [9, 9, 9, 1, 2],
    "Okay.",
]


@pytest.fixture(scope="module")
def model(hf_cache) -> HookedTransformer:
    """The tiny random Qwen distill (same seed as the distill tests, so the cached files are identical)."""
    write_tiny_distill(QWEN)
    return HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu")


@pytest.fixture(scope="module")
def sae(model) -> StandardSAE:
    """A small random ReLU SAE on blocks.0.hook_resid_post with a bias that keeps ~a third of latents on."""
    cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=40, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.2 - 0.3)
    return sae.eval()


def _token_ids(model: HookedTransformer, prompt: str | list[int]) -> list[int]:
    return model.to_tokens(prompt)[0].tolist() if isinstance(prompt, str) else list(prompt)


def _brute_force(
    model, sae
) -> tuple[dict[int, list[tuple[int, int, float]]], list[tuple[int, int, int, str]]]:
    """Every positive activation of every feature (strongest first), one prompt at a time, unbatched, leaving out
    BOS and special tokens (harvest's default exclude_special); and every token row."""
    per_feature: dict[int, list[tuple[int, int, float]]] = {}
    tokens = []
    special = set(model.tokenizer.all_special_ids)
    with torch.no_grad():
        for seq, prompt in enumerate(PROMPTS):
            ids = _token_ids(model, prompt)
            _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=HOOK)
            acts = sae.encode(cache[HOOK][0])  # [pos, d_sae]
            for pos, fid in (acts > 0).nonzero().tolist():
                if ids[pos] in special:
                    continue
                per_feature.setdefault(fid, []).append((seq, pos, float(acts[pos, fid])))
            tokens += [(seq, i, t, model.tokenizer.decode([t])) for i, t in enumerate(ids)]
    for fid in per_feature:
        per_feature[fid] = sorted(per_feature[fid], key=lambda r: (-r[2], r[0], r[1]))
    return per_feature, tokens


def _tables(path: Path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {
            t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in ("tokens", "activations", "autointerp")
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def one_run(model, sae, tmp_path_factory) -> Path:
    """An uninterrupted single-machine harvest, merged."""
    root = tmp_path_factory.mktemp("one_run")
    result = harvest(model, sae, PROMPTS, root / "shards", top_k=TOP_K, batch_size=3, progress=False)
    assert result.complete and result.prompts == len(PROMPTS) and result.tokens > 0
    return merge_shards(root / "shards", root / "harvest.ddb", labels={3: "third feature"})


def test_harvested_db_round_trips_against_brute_force(one_run, model, sae):
    expected, tokens = _brute_force(model, sae)
    with FeatureDB(activations=one_run) as db:  # labels come from the .ddb's own autointerp table
        assert db.n_labels == sae.cfg.d_sae
        assert db.label(3) == "third feature" and db.label(0) == "unlabelled"
        assert expected, "the test SAE should have active features"
        for fid in range(sae.cfg.d_sae):
            got = db.top_activations(fid, k=TOP_K)
            every = expected.get(fid, [])
            want = every[:TOP_K]
            # Batched and unbatched forwards differ in the last bits, so exact ties (e.g. two prompts that
            # start alike) may come out in either order: compare strengths by rank, and each reported
            # position's strength with the brute-force value at that position.
            assert len(got) == len(want), fid
            assert [v for *_, v in got] == pytest.approx([v for *_, v in want], rel=1e-5, abs=1e-6)
            exact = {(s, t): v for s, t, v in every}
            for s, t, v in got:
                assert exact[(s, t)] == pytest.approx(v, rel=1e-5, abs=1e-6), (fid, s, t)
            distinct = [r for r in want if all(abs(r[2] - o[2]) > 1e-5 for o in every if o is not r)]
            assert set(distinct) <= {(s, t, w) for s, t, _ in got for w in [exact[(s, t)]]}
        fid = max(expected, key=lambda f: len(expected[f]))
        for ex in db.top_examples(fid, k=TOP_K, context=2):
            row = [r for r in tokens if r[0] == ex.sequence_id and abs(r[1] - ex.token_idx) <= 2]
            assert list(ex.tokens) == [r[3] for r in row] and list(ex.token_ids) == [r[2] for r in row]
    assert sorted(_tables(one_run)["tokens"]) == sorted(tokens)


def test_interrupted_harvest_resumes_to_the_same_db(one_run, model, sae, tmp_path):
    calls: list[int] = []

    def stop_after_three(done: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(
            model,
            sae,
            PROMPTS,
            tmp_path / "s",
            top_k=TOP_K,
            batch_size=3,
            checkpoint_every=2,
            progress=False,
            on_batch=stop_after_three,
        )
    shard = tmp_path / "s" / "shard-00000-of-00001"
    progress = json.loads((shard / "progress.json").read_text())
    assert progress["done"] == 6 and not progress["complete"]  # checkpoint after batch 2; batch 3 was lost
    with pytest.raises(FeatureDBError, match="incomplete"):
        merge_shards(tmp_path / "s", tmp_path / "partial.ddb")
    # a tokens file left by a crash between writing tokens and progress.json must not be merged twice
    shutil.copy(next(shard.glob("tokens-*.parquet")), shard / "tokens-000000000006.parquet")
    resumed: list[int] = []
    result = harvest(
        model,
        sae,
        PROMPTS,
        tmp_path / "s",
        top_k=TOP_K,
        batch_size=3,
        checkpoint_every=2,
        progress=False,
        on_batch=resumed.append,
    )
    assert resumed == [9, 12] and result.complete  # only the two missing batches ran
    assert harvest(model, sae, PROMPTS, tmp_path / "s", top_k=TOP_K, batch_size=3, progress=False).tokens == 0
    merged = merge_shards(tmp_path / "s", tmp_path / "resumed.ddb", labels={3: "third feature"})
    assert _tables(merged) == _tables(one_run)
    with pytest.raises(FeatureDBError, match="other prompts or settings"):
        harvest(model, sae, PROMPTS[:-1], tmp_path / "s", top_k=TOP_K, batch_size=3, progress=False)


def test_two_machines_merge_to_the_same_db(one_run, model, sae, tmp_path):
    for machine in (0, 1):  # each "machine" harvests its half into its own directory
        harvest(
            model,
            sae,
            PROMPTS,
            tmp_path / f"machine{machine}",
            top_k=TOP_K,
            batch_size=3,
            shard_index=machine,
            num_shards=2,
            progress=False,
        )
    shards = [tmp_path / "machine0" / "shard-00000-of-00002", tmp_path / "machine1" / "shard-00001-of-00002"]
    merged = merge_shards(shards, tmp_path / "two.ddb", labels={3: "third feature"})
    assert _tables(merged) == _tables(one_run)
    with pytest.raises(FeatureDBError, match="exists"):
        merge_shards(shards, tmp_path / "two.ddb")
    with pytest.raises(FeatureDBError, match="overlapping"):
        merge_shards([*shards, one_run.parent / "shards" / "shard-00000-of-00001"], tmp_path / "x.ddb")
    smaller = merge_shards(shards, tmp_path / "top2.ddb", top_k=2)
    with FeatureDB(activations=smaller) as small, FeatureDB(activations=one_run) as full:
        for fid in range(sae.cfg.d_sae):
            assert small.top_activations(fid, k=10) == full.top_activations(fid, k=2)


def test_harvest_argument_errors(model, sae, tmp_path):
    with pytest.raises(ValueError, match="shard_index"):
        harvest(model, sae, PROMPTS, tmp_path, shard_index=2, num_shards=2, progress=False)
    with pytest.raises(HookNameError, match="not a hook of this model"):
        harvest(model, sae, PROMPTS[:2], tmp_path, hook_name="blocks.0.no_such_hook", progress=False)
    with pytest.raises(FeatureDBError, match="no harvest shards"):
        merge_shards(tmp_path / "empty", tmp_path / "out.ddb")


def test_running_topk_equals_sorting_everything():
    """The vectorised running top-k keeps exactly ORDER BY strength DESC, sequence_id, token_idx LIMIT k."""
    from r1_plugin.features.harvester import RunningTopK

    gen = torch.Generator().manual_seed(0)
    k, d = 5, 30
    running = RunningTopK(k, min_strength=0.0)
    seen = []
    for batch in range(7):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        # sparse, with many exact ties (values on a coarse grid) and zeros
        acts = torch.randint(0, 4, (n, d), generator=gen).float() * (torch.rand(n, d, generator=gen) < 0.3)
        seq = torch.full((n,), 10 * batch)
        tok = torch.arange(n)
        running.update(acts, seq, tok)
        seen += [(f, int(seq[r]), int(tok[r]), float(acts[r, f])) for r, f in (acts > 0).nonzero().tolist()]
    got = running.rows()
    got_rows = sorted(zip(*(got[c].tolist() for c in ("feature_id", "sequence_id", "token_idx", "strength"))))
    want = []
    for f in range(d):
        rows = sorted((r for r in seen if r[0] == f), key=lambda r: (-r[3], r[1], r[2]))[:k]
        want += rows
    assert got_rows == sorted(want)
    with pytest.raises(ValueError, match="increasing"):
        running.update(acts, torch.zeros(n, dtype=torch.long), torch.arange(n))


def test_crash_between_state_and_progress_writes_resumes(one_run, model, sae, tmp_path, monkeypatch):
    """A crash after `state.pt` is replaced but before `progress.json` is (the two checkpoint writes) leaves a
    top-k state ahead of the recorded progress; resuming must continue from the state, not re-harvest prompts
    the state already holds (which RunningTopK refuses, and which would duplicate rows)."""
    import r1_plugin.features.harvester as harvest_mod  # the module; `r1_plugin.features.harvest` is the function
    real_write = harvest_mod._atomic_write_bytes
    progress_writes: list[int] = []

    def crash_on_second_progress(path: Path, data: bytes) -> None:
        if path.name == "progress.json":
            progress_writes.append(1)
            if len(progress_writes) == 2:
                raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(harvest_mod, "_atomic_write_bytes", crash_on_second_progress)
    with pytest.raises(KeyboardInterrupt):
        harvest(model, sae, PROMPTS, tmp_path / "s", top_k=TOP_K, batch_size=3, checkpoint_every=1,
                progress=False)
    monkeypatch.setattr(harvest_mod, "_atomic_write_bytes", real_write)
    shard = tmp_path / "s" / "shard-00000-of-00001"
    assert json.loads((shard / "progress.json").read_text())["done"] == 3  # the state holds 6 prompts
    resumed: list[int] = []
    result = harvest(model, sae, PROMPTS, tmp_path / "s", top_k=TOP_K, batch_size=3, checkpoint_every=1,
                     progress=False, on_batch=resumed.append)
    assert resumed == [9, 12] and result.complete
    merged = merge_shards(tmp_path / "s", tmp_path / "resumed.ddb", labels={3: "third feature"})
    assert _tables(merged) == _tables(one_run)


def test_harvest_is_always_the_function_and_the_package_a_plain_module():
    """`features.harvest` is the function even after its module (`features.harvester`) is imported, without any
    swap of the package's class."""
    import sys
    import types

    import r1_plugin.features as features
    import r1_plugin.features.harvester as module

    assert type(sys.modules["r1_plugin.features"]) is types.ModuleType
    assert features.harvest is module.harvest and isinstance(features.harvest, types.FunctionType)
    from r1_plugin.features import harvest as again

    assert again is module.harvest and features.harvester is module


def test_harvest_with_the_sae_spliced_in_reads_the_model_activation(sae, tmp_path):
    """A HookedSAETransformer with the SAE spliced in at the hook harvests what the plain model does: the SAE's
    input (the model's own activation), not the spliced SAE's reconstruction."""
    import copy

    import pandas as pd
    from sae_lens import HookedSAETransformer

    spliced = HookedSAETransformer.from_pretrained_no_processing(QWEN, device="cpu")
    plain = HookedSAETransformer.from_pretrained_no_processing(QWEN, device="cpu")
    spliced.add_sae(copy.deepcopy(sae))
    acts = {}
    for name, m in (("plain", plain), ("spliced", spliced)):
        harvest(m, sae, PROMPTS[:6], tmp_path / name, top_k=4, chunk_size=4, progress=False)
        acts[name] = pd.read_parquet(next((tmp_path / name).glob("shard-*")) / "activations.parquet")
    assert len(acts["plain"]) > 0
    pd.testing.assert_frame_equal(acts["spliced"], acts["plain"], rtol=1e-6, atol=1e-6)
