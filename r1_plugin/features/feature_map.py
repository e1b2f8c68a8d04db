"""A 2-D map of any SAE's features: UMAP of its decoder directions (cosine), cached by weights, with labels.

    from r1_plugin.features.feature_map import feature_map
    result = feature_map(sae, "out/", db=FeatureDB(labels=..., activations=...))   # -> map.png, map.html

Scale: for Goodfire's 28,672 x 7,168 decoder an exact cosine k-NN in 7,168 dimensions costs ~6e12 multiply-adds
(about ten minutes on two busy cores), and UMAP's NN-descent on the raw rows is slower still. So when n^2 * d_in
exceeds 1e11 (`pca_dims="auto"`), the unit-normalised rows are first projected onto their top 64 right singular
vectors (a seeded randomized SVD, uncentred so that angles keep their meaning); the exact cosine k-NN is then
computed in chunks (O(n^2 * dims)) and handed to UMAP (`precomputed_knn`), which only lays the graph out.
`knn="nndescent"` (automatic above `EXACT_KNN_MAX` features) uses UMAP's low-memory NN-descent instead.
`pca_dims=None` keeps every dimension (exact cosine neighbours, at the cost above); an int sets the dimensions.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from r1_plugin.features.feature_map_data import (  # re-exported: the map's data types live there
    Embedding as Embedding,
)
from r1_plugin.features.feature_map_data import (
    FeatureMap as FeatureMap,
)
from r1_plugin.features.feature_map_data import (
    FeatureMapError as FeatureMapError,
)
from r1_plugin.features.feature_map_data import (
    KnnMethod as KnnMethod,
)
from r1_plugin.features.feature_map_data import (
    MapParams as MapParams,
)

AUTO_PCA_DIMS = 64
EXACT_FULL_MAX_MACS = 1e11  # "auto": the k-NN uses every dimension while n^2 * d_in stays below this (~10 s here)
EXACT_KNN_MAX = 250_000  # above this many features the exact k-NN (O(n^2)) gives way to NN-descent
CACHE_DIRNAME = "feature_map_cache"
DEFAULT_PARAMS = MapParams()  # frozen: safe as a shared default
CACHE_FORMAT = 1  # bump when the cached file's layout or the embedding recipe changes

# ---------------------------------------------------------------------------------------------- decoder
def load_sae(release: str, sae_id: str, device: str = "cpu") -> Any:
    """`SAE.from_pretrained(release, sae_id)` (SAELens's registry, to which r1_plugin adds its releases)."""
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device)


def load_decoder(path: str | Path) -> torch.Tensor:
    """Decoder directions [d_sae, d_in] of an SAE on disk: a SAELens folder (`SAE.load_from_disk`) or a Goodfire
    `.pt` state dict (tied `W` [d_in, d_sae], read with `weights_only=True`; its decoder is `W.T`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        from sae_lens import SAE

        return SAE.load_from_disk(str(path), device="cpu").W_dec.detach()
    if path.is_file() and path.suffix == ".pt":
        from r1_plugin.saes.goodfire import load_pt_weights_only

        state = load_pt_weights_only(path)
        if "W_dec" in state:
            return state["W_dec"]
        if "W" in state and state["W"].ndim == 2:
            return state["W"].T
        raise FeatureMapError(f"{path} has neither W_dec nor Goodfire's tied W (keys: {sorted(state)})")
    raise FeatureMapError(
        f"{path} is neither a SAELens SAE folder (cfg.json + weights) nor a Goodfire .pt file; "
        "pass one of those, or a release and id"
    )


def decoder_weights(sae: Any) -> torch.Tensor:
    """The SAE's decoder directions [d_sae, d_in] as stored (`sae.W_dec`, or a tensor given directly)."""
    weights = sae if isinstance(sae, torch.Tensor) else getattr(sae, "W_dec", None)
    if weights is None:
        raise FeatureMapError(
            f"{type(sae).__name__} has no W_dec: pass a SAELens SAE, a decoder tensor [d_sae, d_in], "
            "or a release and id (`load_sae(release, sae_id)`)"
        )
    weights = weights.detach()
    if weights.ndim != 2 or min(weights.shape) < 1:
        raise FeatureMapError(f"W_dec must be 2-D [d_sae, d_in], got shape {tuple(weights.shape)}")
    return weights


def weights_sha256(weights: torch.Tensor) -> str:
    """SHA-256 of the decoder's dtype, shape and bytes: the embedding depends on nothing else of the SAE."""
    w = weights.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{w.dtype}|{tuple(w.shape)}|".encode())
    flat = w.reshape(-1)
    step = max(1, (64 << 20) // max(1, w.element_size()))  # hash in 64 MB slices: no full copy as bytes
    for start in range(0, flat.numel(), step):
        digest.update(flat[start : start + step].view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()


def _unit_rows(weights: torch.Tensor) -> torch.Tensor:
    """float32 rows scaled to unit norm (all-zero rows stay zero): cosine geometry becomes dot products."""
    x = weights.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise FeatureMapError("W_dec has NaN or infinite entries; cannot embed it")
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def project(x: torch.Tensor, dims: int, seed: int, n_iter: int = 4) -> tuple[torch.Tensor, float]:
    """`x` onto its top `dims` right singular vectors (seeded randomized SVD, uncentred); (projection, kept share)."""
    n, d = x.shape
    if dims >= min(n, d):
        return x, 1.0
    gen = torch.Generator().manual_seed(seed)
    width = min(d, dims + 16)
    y = x @ torch.randn(d, width, generator=gen)
    for _ in range(n_iter):  # power iterations sharpen the spectrum; QR keeps them well conditioned
        q, _ = torch.linalg.qr(y)
        y = x @ (x.T @ q)
    q, _ = torch.linalg.qr(y)
    _, s, vt = torch.linalg.svd(q.T @ x, full_matrices=False)
    total = float((x * x).sum())
    kept = float((s[:dims] ** 2).sum()) / total if total > 0 else 1.0
    return x @ vt[:dims].T, kept


def exact_cosine_knn(
    z: torch.Tensor, k: int, chunk_bytes: int = 256 << 20, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows by cosine distance (each row its own first neighbour): (indices, distances) [n, k]."""
    from tqdm.auto import tqdm

    n = z.shape[0]
    k = min(k, n)
    zn = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rows = max(1, min(n, chunk_bytes // (4 * n)))
    indices = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float32)
    starts = range(0, n, rows)
    for start in tqdm(starts, desc="nearest neighbours", unit="chunk", disable=not progress, leave=False):
        stop = min(n, start + rows)
        sims = zn[start:stop] @ zn.T
        sims[torch.arange(stop - start), torch.arange(start, stop)] = math.inf  # self first, at distance 0
        top, idx = torch.topk(sims, k, dim=1)
        indices[start:stop] = idx.numpy()
        dists[start:stop] = (1.0 - top).clamp_min(0.0).numpy()
    dists[:, 0] = 0.0
    return indices, dists


def projection_dims(params: MapParams, n: int, d: int) -> int | None:
    """The dimensions the k-NN runs in: `pca_dims`, or for "auto" every one while n^2 * d <= 1e11, else 64."""
    if params.pca_dims == "auto":
        return None if float(n) * n * d <= EXACT_FULL_MAX_MACS else AUTO_PCA_DIMS
    return params.pca_dims


def embed(
    weights: torch.Tensor, params: MapParams = DEFAULT_PARAMS, progress: bool = True
) -> tuple[np.ndarray, float]:
    """UMAP (cosine) of the decoder rows to 2-D, seeded; (coords [d_sae, 2] float32, projection's kept share).

    `progress`: a bar over the stages (projection, neighbours, layout) and one over the k-NN chunks. UMAP's own
    verbose mode is left off: it prints its whole parameter repr, precomputed neighbour arrays included.
    """
    import umap
    from tqdm.auto import tqdm

    x = _unit_rows(weights)
    n = x.shape[0]
    if n < 4:
        raise FeatureMapError(f"a map needs at least 4 features, the decoder has {n}")
    kept = 1.0
    dims = projection_dims(params, n, x.shape[1])
    n_neighbors = min(params.n_neighbors, n - 1)
    method = params.knn if params.knn != "auto" else ("exact" if n <= EXACT_KNN_MAX else "nndescent")
    kwargs: dict[str, Any] = dict(
        n_neighbors=n_neighbors,
        min_dist=params.min_dist,
        metric="cosine",
        random_state=params.seed,
        n_epochs=params.n_epochs,
        low_memory=True,
        n_jobs=1,
        verbose=False,
    )
    with tqdm(total=3, desc=f"feature map of {n:,} features", unit="stage", disable=not progress) as bar:
        bar.set_postfix_str(f"projecting to {dims} dims" if dims is not None else "unit rows")
        if dims is not None:
            x, kept = project(x, dims, params.seed)
        bar.update()
        bar.set_postfix_str(f"{method} {n_neighbors}-NN")
        with warnings.catch_warnings():
            # random_state forces n_jobs=1 (that makes the layout reproducible); no transform() needs an index.
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            if method == "exact":
                knn_idx, knn_dist = exact_cosine_knn(x, n_neighbors, progress=progress)
                kwargs["precomputed_knn"] = (knn_idx, knn_dist, None)
            bar.update()
            bar.set_postfix_str("UMAP layout" + (" (NN-descent first)" if method == "nndescent" else ""))
            coords = umap.UMAP(**kwargs).fit_transform(x.numpy())
        bar.update()
    return np.asarray(coords, dtype=np.float32), kept


def _cache_key(digest: str, params: MapParams) -> str:
    import umap

    version = getattr(umap, "__version__", "?")
    blob = json.dumps({"w": digest, "p": asdict(params), "umap": version, "fmt": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_embedding(
    sae: Any,
    cache_dir: str | Path | None,
    params: MapParams = DEFAULT_PARAMS,
    progress: bool = True,
) -> Embedding:
    """The 2-D embedding of `sae`'s decoder, read from `cache_dir` when its weights and params match, else made.

    The cache file is `<cache_dir>/umap-<key>.npz`, key = SHA-256 of (decoder bytes, params, umap version);
    `cache_dir=None` never reads or writes a cache.
    """
    started = time.time()
    weights = decoder_weights(sae)
    digest = weights_sha256(weights)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"umap-{_cache_key(digest, params)[:24]}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                coords = data["coords"]
                meta = json.loads(str(data["meta"]))
            if coords.shape == (weights.shape[0], 2) and meta.get("weights_sha256") == digest:
                return Embedding(coords, digest, params, path, True, meta.get("explained"), time.time() - started)
    coords, kept = embed(weights, params, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"weights_sha256": digest, "params": asdict(params), "explained": kept, "shape": list(weights.shape)}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, coords=coords, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
    return Embedding(coords, digest, params, path, False, kept, time.time() - started)


def _per_feature(name: str, values: Any, n: int) -> np.ndarray | list[str | None]:
    """A statistic as a float array [n] (NaN = missing), or a list of strings for a categorical one."""
    if isinstance(values, Mapping):
        bad = [k for k in values if not 0 <= int(k) < n]
        if bad:
            raise FeatureMapError(f"statistic {name!r} has feature ids outside 0..{n - 1}: {bad[:5]}")
        sample = next((v for v in values.values() if v is not None), 0.0)
        if isinstance(sample, str):
            cats: list[str | None] = [None] * n
            for k, v in values.items():
                cats[int(k)] = None if v is None else str(v)
            return cats
        arr = np.full(n, np.nan, dtype=np.float64)
        for k, v in values.items():
            arr[int(k)] = np.nan if v is None else float(v)
        return arr
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    seq = list(values) if not isinstance(values, np.ndarray) else values
    if len(seq) != n:
        raise FeatureMapError(f"statistic {name!r} has {len(seq)} values; the SAE has {n} features")
    if isinstance(seq, np.ndarray) and seq.dtype.kind in "biuf":
        return seq.astype(np.float64).reshape(n)
    if any(isinstance(v, str) for v in seq):
        return [None if v is None else str(v) for v in seq]
    return np.array([np.nan if v is None else float(v) for v in seq], dtype=np.float64)


def read_stat_file(spec: str | Path) -> tuple[str, np.ndarray | torch.Tensor | dict[int, Any]]:
    """`NAME=PATH[:COLUMN]` (or `PATH[:COLUMN]`): a .npy/.pt array [d_sae], or a .csv with feature_id + COLUMN."""
    text = str(spec)
    name = None
    named = re.match(r"^([A-Za-z_][\w.-]*)=(.+)$", text)
    if named:
        name, text = named.group(1), named.group(2)
    m = re.match(r"^(.*\.(?:csv|npy|pt))(?::(.+))?$", text, flags=re.IGNORECASE)
    if not m:
        raise FeatureMapError(f"statistic file {text!r}: expected NAME=PATH.npy, PATH.pt or PATH.csv:COLUMN")
    path, column = Path(m.group(1)).expanduser(), m.group(2)
    if not path.is_file():
        raise FeatureMapError(f"statistic file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values: Any = np.load(path, allow_pickle=False)
    elif suffix == ".pt":
        values = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(values, torch.Tensor):
            raise FeatureMapError(f"{path} holds a {type(values).__name__}, expected one tensor [d_sae]")
    else:
        import pandas as pd

        frame = pd.read_csv(path)
        if "feature_id" not in frame.columns:
            raise FeatureMapError(f"{path} has no feature_id column (has {list(frame.columns)})")
        others = [c for c in frame.columns if c != "feature_id"]
        if column is None:
            if len(others) != 1:
                raise FeatureMapError(f"{path} has columns {others}: name one, e.g. {path}:{others[0] if others else 'x'}")
            column = others[0]
        if column not in frame.columns:
            raise FeatureMapError(f"{path} has no column {column!r} (has {others})")
        col = frame[column]
        values = {
            int(k): (None if v is None or (isinstance(v, float) and math.isnan(v)) else (v if isinstance(v, str) else float(v)))
            for k, v in zip(frame["feature_id"], col.tolist())
        }
    if isinstance(values, np.ndarray | torch.Tensor) and values.ndim != 1:
        raise FeatureMapError(f"{path}: expected a 1-D array [d_sae], got shape {tuple(values.shape)}")
    return name or (column or path.stem), values


def _label_rows(db: Any) -> list[tuple[int, str, float | None, float | None]]:
    """(feature_id, label, quality, interestingness) of every labelled feature, in one query where possible.

    FeatureDB keeps the best label per feature in its in-memory `feature_labels` table; one SELECT over it takes
    milliseconds where 28,672 `get` calls take about a minute. Other databases go through `get`.
    """
    import duckdb

    con = getattr(db, "_con", None)
    if isinstance(con, duckdb.DuckDBPyConnection):
        try:
            rows = con.execute(
                "SELECT feature_id, label, quality, interestingness FROM feature_labels ORDER BY feature_id"
            ).fetchall()
            return [(int(f), str(lab), q, i) for f, lab, q, i in rows]
        except duckdb.Error:  # a FeatureDB without that table: fall back to the public API
            pass
    return [(fid, (r := db.get(fid)).label, r.quality, r.interestingness) for fid in db.feature_ids()]


def _db_labels(db: Any, n: int) -> tuple[list[str | None], dict[str, np.ndarray]]:
    """Every label in `db` for ids < n, with quality and interestingness (NaN where missing)."""
    labels: list[str | None] = [None] * n
    quality = np.full(n, np.nan)
    interest = np.full(n, np.nan)
    if not getattr(db, "n_labels", 0):
        return labels, {}
    for fid, label, q, i in _label_rows(db):
        if 0 <= fid < n:
            labels[fid] = label
            quality[fid] = np.nan if q is None else q
            interest[fid] = np.nan if i is None else i
    scores = {name: arr for name, arr in (("quality", quality), ("interestingness", interest)) if np.isfinite(arr).any()}
    return labels, scores


def _db_examples(
    db: Any, ids: Sequence[int], top_n: int, context: int, progress: bool
) -> tuple[dict[int, list[Any]], np.ndarray | None]:
    """Top `top_n` examples of each feature in `ids`, and each feature's strongest activation (NaN = none)."""
    from tqdm.auto import tqdm

    if top_n <= 0 or getattr(db, "activations_path", None) is None:
        return {}, None
    examples: dict[int, list[Any]] = {}
    top = np.full(len(ids), np.nan)
    for i, fid in enumerate(tqdm(ids, desc="top examples", unit="feature", disable=not progress, leave=False)):
        found = db.top_examples(int(fid), k=top_n, context=context)
        if found:
            examples[int(fid)] = found
            top[i] = found[0].strength
    return examples, top


def build_feature_map(
    sae: Any,
    *,
    db: Any = None,
    stats: Mapping[str, Any] | None = None,
    top_n: int = 5,
    context: int = 8,
    cache_dir: str | Path | None = None,
    params: MapParams = DEFAULT_PARAMS,
    title: str | None = None,
    progress: bool = True,
) -> FeatureMap:
    """Embed `sae`'s decoder (cached) and gather labels/scores from `db`, per-feature `stats`, top examples.

    `db`: a `FeatureDB` (Goodfire's autointerp.db/.csv and .ddb, or a harvested database), or None.
    `stats`: name -> per-feature values (array/tensor/list of length d_sae, or {feature_id: value}); numbers
    colour on a scale (firing rate, max activation), strings as categories (a segment from an experiment).
    `top_n` examples per feature (0: none) with `context` tokens either side are embedded for the HTML cards;
    the strongest activation in `db` becomes the statistic `max_activation`.
    """
    if int(top_n) < 0:
        raise FeatureMapError(f"top_n must be >= 0, got {top_n}")
    emb = cached_embedding(sae, cache_dir, params, progress=progress)
    n = emb.coords.shape[0]
    labels: list[str | None] = [None] * n
    scores: dict[str, np.ndarray] = {}
    examples: dict[int, list[Any]] = {}
    numeric: dict[str, np.ndarray] = {}
    groups: dict[str, list[str | None]] = {}
    if db is not None:
        labels, scores = _db_labels(db, n)
        examples, top = _db_examples(db, list(range(n)), int(top_n), int(context), progress)
        if top is not None and np.isfinite(top).any():
            numeric["max_activation"] = top
    for name, values in (stats or {}).items():
        parsed = _per_feature(str(name), values, n)
        if isinstance(parsed, np.ndarray):
            numeric[str(name)] = parsed
        else:
            groups[str(name)] = parsed
    if title is None:
        meta = getattr(getattr(sae, "cfg", None), "metadata", None)
        parts = [str(getattr(meta, k)) for k in ("release", "sae_id", "hook_name") if meta is not None and getattr(meta, k, None)]
        title = " / ".join(parts) or f"SAE with {n} features"
    return FeatureMap(title, emb.coords, labels, scores, numeric, groups, examples, emb)


@dataclass
class MapFiles:
    """What `feature_map` wrote."""

    png: Path | None
    html: Path | None
    map: FeatureMap


def feature_map(
    sae: Any,
    out: str | Path,
    *,
    db: Any = None,
    stats: Mapping[str, Any] | None = None,
    color_by: str | None = None,
    top_n: int = 5,
    context: int = 8,
    params: MapParams = DEFAULT_PARAMS,
    name: str = "feature_map",
    png: bool = True,
    html: bool = True,
    title: str | None = None,
    progress: bool = True,
) -> MapFiles:
    """Write `<out>/<name>.png` and `<out>/<name>.html` for `sae`; the embedding is cached in `<out>/feature_map_cache/`.

    `sae`: a SAELens `SAE` (or a decoder tensor); use `load_sae(release, sae_id)` for a release and id.
    `color_by`: the PNG's colouring (a label score, a statistic or a category; default: the first there is);
    the HTML offers them all.
    """
    from r1_plugin.features.feature_map_html import write_html
    from r1_plugin.features.feature_map_png import write_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fmap = build_feature_map(
        sae, db=db, stats=stats, top_n=top_n, context=context, cache_dir=out / CACHE_DIRNAME,
        params=params, title=title, progress=progress,
    )  # fmt: skip
    if color_by is not None and color_by not in fmap.color_modes():
        raise FeatureMapError(f"cannot colour by {color_by!r}: the map has {fmap.color_modes() or 'no statistics'}")
    png_path = write_png(fmap, out / f"{name}.png", color_by=color_by) if png else None
    html_path = write_html(fmap, out / f"{name}.html") if html else None
    return MapFiles(png_path, html_path, fmap)
