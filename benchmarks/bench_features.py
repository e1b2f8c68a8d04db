"""Feature database benchmarks: `top_examples` latency on a 10M-row activations table, and harvest throughput.

Run by hand: `.venv/bin/python benchmarks/bench_features.py [--quick]`; results go to docs/features.md.

1. Latency: a DuckDB file with 10M activations rows (28,672 features, ~350 rows each, as in Goodfire's
   sampled databases) and a 5M-token `tokens` table, generated inside DuckDB with range(). Three layouts of
   the activations table: insertion (random) order, random order + an ART index on feature_id, and sorted by
   (feature_id, strength DESC) (what `merge_shards` writes). Median/p95 of `FeatureDB.top_examples(f, k=10,
   context=8)` over random features, after a warm-up.
2. Harvest: tokens/s of `harvest` (tiny random Qwen distill + a TopK SAE, CPU) and of the top-k merge alone
   at R1's SAE width (d_sae 28,672).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="bench_features_"))
os.environ.setdefault("HF_HUB_CACHE", str(_TMP / "hf"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import duckdb  # noqa: E402
import torch  # noqa: E402

N_FEATURES = 28_672
N_SEQ, SEQ_LEN = 5_000, 1_000


def build(path: Path, n_rows: int, layout: str) -> float:
    """Write a Goodfire-schema .ddb with `n_rows` activations in the given layout; returns build seconds."""
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE tokens AS SELECT (i // ?)::BIGINT AS sequence_id, (i % ?)::INTEGER AS token_idx, "
        "(hash(i) % 129280)::INTEGER AS token, 'tok' || (i % 997)::VARCHAR AS decoded_token FROM range(?) t(i)",
        [SEQ_LEN, SEQ_LEN, N_SEQ * SEQ_LEN],
    )
    order = "ORDER BY feature_id, strength DESC, sequence_id, token_idx" if layout == "sorted" else ""
    con.execute(
        "CREATE TABLE activations AS SELECT * FROM ("
        "SELECT (hash(i) % ?)::INTEGER AS feature_id, (hash(i * 7 + 1) % ?)::BIGINT AS sequence_id, "
        f"(hash(i * 13 + 3) % ?)::INTEGER AS token_idx, random()::FLOAT AS strength FROM range(?) t(i)) {order}",
        [N_FEATURES, N_SEQ, SEQ_LEN, n_rows],
    )
    if layout == "art-index":
        con.execute("CREATE INDEX activations_feature ON activations (feature_id)")
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def time_top_examples(
    path: Path, n_queries: int, k: int = 10, context: int = 8
) -> tuple[float, float, float]:
    """(median ms, p95 ms, first-query ms) of top_examples over random features, opened fresh."""
    from r1_plugin.features import FeatureDB

    rng = random.Random(0)
    features = [rng.randrange(N_FEATURES) for _ in range(n_queries + 1)]
    with FeatureDB(activations=path) as db:
        t0 = time.perf_counter()
        first = db.top_examples(features[0], k=k, context=context)
        cold = (time.perf_counter() - t0) * 1000
        assert len(first) == k and all(0 <= e.position and len(e.tokens) <= 2 * context + 1 for e in first)
        times = []
        for f in features[1:]:
            t0 = time.perf_counter()
            db.top_examples(f, k=k, context=context)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], cold


def bench_latency(n_rows: int, n_queries: int) -> None:
    print(
        f"## top_examples(k=10, context=8) on {n_rows / 1e6:.0f}M activations rows, {N_SEQ * SEQ_LEN / 1e6:.0f}M tokens"
    )
    print("| activations layout | build s | file MB | median ms | p95 ms | first query ms |")
    print("|---|---|---|---|---|---|")
    for layout in ("random", "art-index", "sorted"):
        path = _TMP / f"acts-{layout}.ddb"
        seconds = build(path, n_rows, layout)
        med, p95, cold = time_top_examples(path, n_queries)
        size = path.stat().st_size / 1e6
        print(f"| {layout} | {seconds:.1f} | {size:.0f} | {med:.1f} | {p95:.1f} | {cold:.1f} |")
        path.unlink()


def bench_harvest(n_prompts: int, quick: bool) -> None:
    from sae_lens import TopKSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE
    from transformer_lens import HookedTransformer

    from r1_plugin.features import harvest, merge_shards
    from r1_plugin.features.harvester import RunningTopK
    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    repo = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    write_tiny_distill(repo)
    model = HookedTransformer.from_pretrained_no_processing(repo, device="cpu")
    d_sae = 4096
    cfg = TopKSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=32, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = TopKSAE(cfg)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 380, (128,), generator=gen).tolist() for _ in range(n_prompts)]
    result = harvest(model, sae, prompts, _TMP / "harvest", top_k=64, batch_size=16, progress=False)
    t0 = time.perf_counter()
    merge_shards(_TMP / "harvest", _TMP / "harvest.ddb")
    merge_s = time.perf_counter() - t0
    print(
        f"\n## harvest (tiny Qwen distill d_model {model.cfg.d_model}, TopK SAE d_sae {d_sae}, CPU, "
        f"{torch.get_num_threads()} threads)"
    )
    print(
        f"- {result.tokens} tokens in {result.seconds:.2f} s: **{result.tokens_per_s:,.0f} tokens/s** "
        f"(batch 16 x 128 tokens, top_k 64, checkpoint every 16 batches); merge_shards {merge_s:.2f} s"
    )

    # The per-feature bookkeeping alone at R1's SAE width: how many tokens/s the top-k merge can absorb.
    n_tok, width, l0 = 1024, N_FEATURES, 128  # R1 math SAE: k = 128 active latents per token
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3 if quick else 10):
        acts = torch.zeros(n_tok, width)
        idx = torch.randint(0, width, (n_tok, l0), generator=gen)
        acts.scatter_(1, idx, torch.rand(n_tok, l0, generator=gen) * 3)
        batches.append(acts)
    running = RunningTopK(64)
    t0 = time.perf_counter()
    for b, acts in enumerate(batches):
        running.update(acts, torch.full((n_tok,), b), torch.arange(n_tok))
    per_batch = (time.perf_counter() - t0) / len(batches)
    print(
        f"- top-k merge alone at d_sae {width}, {n_tok}-token batches, L0 {l0}, top_k 64: {per_batch * 1000:.0f} ms/batch "
        f"= {n_tok / per_batch:,.0f} tokens/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M rows, fewer queries and prompts")
    parser.add_argument("--skip-harvest", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    bench_latency(1_000_000 if args.quick else 10_000_000, 20 if args.quick else 100)
    if not args.skip_harvest:
        bench_harvest(64 if args.quick else 512, args.quick)


if __name__ == "__main__":
    main()
