"""Feature-map benchmark: embedding a random decoder of Goodfire's R1 shape (28,672 x 7,168) on this CPU.

Run by hand, once, under nice: `nice .venv/bin/python benchmarks/bench_feature_map.py [--quick]`; results go to
docs/benchmarks.md and docs/features.md.

1. Our pipeline (`r1_plugin.features.feature_map.embed`) stage by stage: weights hash, unit rows + seeded
   randomized SVD to `pca_dims`, exact cosine k-NN on the projection, UMAP layout; wall time and peak RSS.
2. What the projection costs in neighbours: recall@15 of the exact full-dimension cosine neighbours of 512
   random features, for several `pca_dims`, and the time the full-dimension exact k-NN would take
   (extrapolated from those 512 rows).
3. Reference, same run: plain `umap.UMAP(metric="cosine")` (NN-descent on the raw rows) on an 8,192-feature
   subset, against our pipeline on the same subset: time ratio.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from r1_plugin.features.feature_map import (
    MapParams,
    _unit_rows,
    embed,
    exact_cosine_knn,
    project,
    weights_sha256,
)

D_SAE, D_IN = 28_672, 7_168
K = 15


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def random_decoder(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """W_dec [n, d] with N(0, 1/d) entries: rows of norm ~1, as a freshly initialised SAE."""
    gen = torch.Generator().manual_seed(seed)
    return torch.empty(n, d).normal_(generator=gen).mul_(d**-0.5)


def stages(w: torch.Tensor, pca_dims: int) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per stage of our pipeline (the same calls `embed` makes)."""
    import umap

    out: dict[str, float] = {}
    t = time.perf_counter()
    weights_sha256(w)
    out["hash"] = time.perf_counter() - t
    t = time.perf_counter()
    z, kept = project(_unit_rows(w), pca_dims, seed=0)
    out["project"] = time.perf_counter() - t
    out["kept_share"] = kept
    t = time.perf_counter()
    idx, dist = exact_cosine_knn(z, K, progress=True)
    out["knn"] = time.perf_counter() - t
    t = time.perf_counter()
    umap.UMAP(n_neighbors=K, metric="cosine", random_state=0, n_jobs=1, low_memory=True,
              precomputed_knn=(idx, dist, None)).fit_transform(z.numpy())  # fmt: skip
    out["umap"] = time.perf_counter() - t
    out["total"] = out["hash"] + out["project"] + out["knn"] + out["umap"]
    return out, z


def recall(w: torch.Tensor, z: torch.Tensor, n_queries: int = 512) -> tuple[float, float]:
    """recall@K of the full-dimension cosine neighbours among those of projection `z`; full exact k-NN seconds."""
    x = _unit_rows(w)
    rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))[:n_queries]
    t = time.perf_counter()
    sims = x[rows] @ x.T
    sims[torch.arange(n_queries), rows] = -np.inf
    truth = torch.topk(sims, K, dim=1).indices
    full_seconds = (time.perf_counter() - t) * x.shape[0] / n_queries
    zn = z / z.norm(dim=1, keepdim=True)
    s = zn[rows] @ zn.T
    s[torch.arange(n_queries), rows] = -np.inf
    got = torch.topk(s, K, dim=1).indices
    share = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(got, truth)]))
    return share, full_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the features (a smoke run)")
    parser.add_argument("--pca-dims", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    n = D_SAE // 4 if args.quick else D_SAE
    print(f"random decoder {n} x {D_IN} (float32, {n * D_IN * 4 / 2**30:.2f} GiB), torch threads 2")
    w = random_decoder(n, D_IN)

    import umap  # noqa: F401  (import and numba set-up outside the timings)

    warm = random_decoder(600, 32, seed=5)
    embed(warm, MapParams(n_epochs=5), progress=False)  # numba JIT compiles once per process

    t, z = stages(w, args.pca_dims)
    print(
        f"ours (pca {args.pca_dims}): hash {t['hash']:.1f}s, project {t['project']:.1f}s "
        f"(keeps {t['kept_share']:.1%} of the squared norm), exact k-NN {t['knn']:.1f}s, UMAP {t['umap']:.1f}s, "
        f"total {t['total']:.1f}s; peak RSS {peak_rss_gb():.2f} GiB"
    )
    rec, full = recall(w, z)
    print(f"recall@{K} of full-dimension cosine neighbours after pca {args.pca_dims}: {rec:.3f}")
    print(f"full-dimension exact k-NN (pca_dims=None) would take ~{full:.0f}s (extrapolated from 512 rows)")

    sub = w[:8192]
    t0 = time.perf_counter()
    embed(sub, MapParams(pca_dims=args.pca_dims, n_neighbors=K), progress=False)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    umap.UMAP(n_neighbors=K, metric="cosine", random_state=0, n_jobs=1, low_memory=True).fit_transform(sub.numpy())
    ref = time.perf_counter() - t0
    print(f"8,192-feature subset: ours {ours:.1f}s, plain umap.UMAP(metric='cosine') {ref:.1f}s, ratio {ours / ref:.2f}")
    print(f"peak RSS {peak_rss_gb():.2f} GiB")


if __name__ == "__main__":
    main()
