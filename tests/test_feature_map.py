"""The feature map: exact k-NN and projection against numpy oracles, seeded UMAP, weight-keyed cache, outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from r1_plugin.demo import assets
from r1_plugin.errors import R1PluginError
from r1_plugin.features import FeatureDB
from r1_plugin.features.feature_map import (
    FeatureMapError,
    MapParams,
    build_feature_map,
    cached_embedding,
    embed,
    exact_cosine_knn,
    feature_map,
    load_decoder,
    project,
    projection_dims,
    read_stat_file,
    weights_sha256,
)
from r1_plugin.features.feature_map_html import map_payload, render_page, script_safe_json
from r1_plugin.features.render import visible
from r1_plugin.testing.feature_db import HOSTILE_LABELS, build_tiny_feature_db

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_CLUSTERS, PER_CLUSTER, D_IN = 6, 12, 24
FAST = MapParams(seed=0, n_neighbors=8, n_epochs=60)


def clustered_sae(seed: int = 0):
    """A SAELens StandardSAE whose 72 decoder rows are 6 tight cosine clusters (the ground truth for the map)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(N_CLUSTERS, D_IN, generator=gen)
    rows = centres.repeat_interleave(PER_CLUSTER, 0) + 0.15 * torch.randn(N_CLUSTERS * PER_CLUSTER, D_IN, generator=gen)
    rows *= torch.rand(rows.shape[0], 1, generator=gen) * 3 + 0.5  # norms vary: only directions may matter
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=rows.shape[0]))
    with torch.no_grad():
        sae.W_dec.copy_(rows)
    return sae


@pytest.fixture(scope="module")
def sae():
    return clustered_sae()


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    built = build_tiny_feature_db(tmp_path_factory.mktemp("fmdb"), n_features=40)
    with FeatureDB(labels=built.labels_path, activations=built.activations_path) as db:
        yield built, db


def cluster_of(i: int) -> int:
    return i // PER_CLUSTER


def test_exact_cosine_knn_equals_brute_force_numpy():
    x = np.random.default_rng(1).normal(size=(300, 20)).astype(np.float32)
    idx, dist = exact_cosine_knn(torch.from_numpy(x), 7, chunk_bytes=300 * 4 * 37)  # several chunks
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = 1.0 - xn @ xn.T
    np.fill_diagonal(cos, -1.0)  # self first
    ref = np.argsort(cos, axis=1, kind="stable")[:, :7]
    assert (idx[:, 0] == np.arange(300)).all() and (dist[:, 0] == 0).all()
    assert (idx == ref).all()
    np.testing.assert_allclose(dist[:, 1:], np.take_along_axis(1.0 - xn @ xn.T, ref, 1)[:, 1:], atol=1e-5)


def test_projection_keeps_cosines_of_low_rank_rows_exactly():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 10, generator=gen) @ torch.randn(10, 64, generator=gen)  # rank 10 in 64 dims
    x = x / x.norm(dim=1, keepdim=True)
    z, kept = project(x, 16, seed=0)
    assert z.shape == (200, 16)
    torch.testing.assert_close(z @ z.T, x @ x.T, atol=1e-4, rtol=0)
    assert kept == pytest.approx(1.0, abs=1e-5)
    z8, kept8 = project(x, 8, seed=0)
    s = torch.linalg.svdvals(x)
    assert kept8 == pytest.approx(float((s[:8] ** 2).sum() / (s**2).sum()), rel=1e-3)  # top-8 share, as SVD


def test_map_separates_the_clusters_and_ignores_row_norms(sae):
    coords, _ = embed(sae.W_dec, FAST, progress=False)
    assert coords.shape == (72, 2) and np.isfinite(coords).all()
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :5]
    same = np.mean([cluster_of(j) == cluster_of(i) for i in range(72) for j in nn[i]])
    assert same > 0.95
    # Cosine: row norms do not change the neighbour graph UMAP is given (its layout is chaotic in the last bits).
    rescaled = sae.W_dec.detach() * torch.linspace(0.1, 10, 72)[:, None]
    assert np.array_equal(exact_cosine_knn(rescaled, 8)[0], exact_cosine_knn(sae.W_dec.detach(), 8)[0])


def test_auto_projection_only_for_large_decoders_and_the_projected_map_still_separates_clusters(sae):
    assert projection_dims(MapParams(), 28_672, 7_168) == 64  # Goodfire's R1 SAEs
    assert projection_dims(MapParams(), 768, 96) is None  # the embedded tiny SAE: exact in every dimension
    assert projection_dims(MapParams(pca_dims=None), 28_672, 7_168) is None
    assert projection_dims(MapParams(pca_dims=8), 72, 24) == 8
    coords, kept = embed(sae.W_dec, MapParams(seed=0, n_neighbors=8, n_epochs=60, pca_dims=8), progress=False)
    assert 0.8 < kept < 1.0  # six cluster directions carry most of the squared norm
    d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :5]
    assert np.mean([cluster_of(j) == cluster_of(i) for i in range(72) for j in nn[i]]) > 0.95
    with pytest.raises(FeatureMapError, match="pca_dims"):
        MapParams(pca_dims=1)


def test_umap_is_reproducible_with_the_seed(sae):
    a, _ = embed(sae.W_dec, FAST, progress=False)
    b, _ = embed(sae.W_dec, FAST, progress=False)
    c, _ = embed(sae.W_dec, MapParams(seed=1, n_neighbors=8, n_epochs=60), progress=False)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_cache_hits_on_the_second_call_and_misses_when_weights_or_params_change(sae, tmp_path):
    first = cached_embedding(sae, tmp_path, FAST, progress=False)
    assert not first.cache_hit and first.cache_path.is_file()
    second = cached_embedding(sae, tmp_path, FAST, progress=False)
    assert second.cache_hit and second.cache_path == first.cache_path
    assert np.array_equal(second.coords, first.coords)
    assert first.weights_sha256 == weights_sha256(sae.W_dec)
    changed = clustered_sae()
    with torch.no_grad():
        changed.W_dec[5, 3] += 1e-3
    assert weights_sha256(changed.W_dec) != first.weights_sha256
    third = cached_embedding(changed, tmp_path, FAST, progress=False)
    assert not third.cache_hit and third.cache_path != first.cache_path
    other = cached_embedding(sae, tmp_path, MapParams(seed=2, n_neighbors=8, n_epochs=60), progress=False)
    assert not other.cache_hit
    assert len(list(tmp_path.glob("umap-*.npz"))) == 3


def test_weights_hash_covers_dtype_and_every_byte():
    w = torch.randn(40, 8)
    assert weights_sha256(w) == weights_sha256(w.clone())
    assert weights_sha256(w) != weights_sha256(w.to(torch.bfloat16))
    bumped = w.clone()
    bumped[-1, -1] = torch.nextafter(bumped[-1, -1], torch.tensor(np.inf))
    assert weights_sha256(w) != weights_sha256(bumped)


def test_labels_scores_examples_and_max_activation_come_from_the_feature_db(sae, tiny_db, tmp_path):
    built, db = tiny_db
    fmap = build_feature_map(sae, db=db, top_n=3, context=4, cache_dir=tmp_path, params=FAST, progress=False)
    # The database labels ids 0..40; the SAE has 72 features: ids beyond are unlabelled.
    for fid in range(72):
        expected = db.label(fid) if fid <= 40 else None
        assert fmap.labels[fid] == expected
    quality = {fid: db.get(fid).quality for fid in range(41)}
    for fid, q in quality.items():
        assert (np.isnan(fmap.scores["quality"][fid]) if q is None else fmap.scores["quality"][fid] == q)
    for fid in range(40):
        assert [(e.sequence_id, e.token_idx) for e in fmap.examples[fid]] == [
            (s, t) for s, t, _ in db.top_activations(fid, 3)
        ]
        # max activation = plain max over the written activation rows of the feature
        assert fmap.stats["max_activation"][fid] == pytest.approx(max(r[3] for r in built.activations if r[0] == fid))
    assert 40 not in fmap.examples and np.isnan(fmap.stats["max_activation"][40])


def test_labels_through_the_public_api_equal_the_bulk_read(sae, tiny_db, tmp_path):
    """A database object with only FeatureDB's public methods gives the same labels and scores."""
    _, db = tiny_db

    class PublicOnly:
        activations_path = None
        n_labels = db.n_labels
        feature_ids = staticmethod(db.feature_ids)
        get = staticmethod(db.get)

    bulk = build_feature_map(sae, db=db, top_n=0, cache_dir=tmp_path, params=FAST, progress=False)
    public = build_feature_map(sae, db=PublicOnly(), cache_dir=tmp_path, params=FAST, progress=False)
    assert public.labels == bulk.labels and public.examples == {} == bulk.examples
    np.testing.assert_array_equal(public.scores["quality"], bulk.scores["quality"])
    np.testing.assert_array_equal(public.scores["interestingness"], bulk.scores["interestingness"])


def test_statistics_numbers_and_categories(sae, tmp_path):
    rate = np.linspace(0, 1, 72)
    segment = {i: ("early" if i < 30 else "late") for i in range(0, 72, 2)}
    fmap = build_feature_map(
        sae, stats={"firing_rate": torch.from_numpy(rate), "segment": segment}, cache_dir=tmp_path,
        params=FAST, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(fmap.stats["firing_rate"], rate)
    assert fmap.groups["segment"][0] == "early" and fmap.groups["segment"][1] is None
    assert fmap.groups["segment"][40] == "late"
    # The PNG in each colouring: a scale, categories, one colour; the pixels differ between them.
    from r1_plugin.features.feature_map_png import write_png

    images = [write_png(fmap, tmp_path / f"{m}.png", color_by=m).read_bytes() for m in ("firing_rate", "segment")]
    images.append(write_png(fmap.__class__(fmap.title, fmap.coords, fmap.labels), tmp_path / "plain.png").read_bytes())
    assert all(img[:8] == PNG_MAGIC for img in images) and len(set(images)) == 3
    with pytest.raises(FeatureMapError, match="71 values; the SAE has 72"):
        build_feature_map(sae, stats={"x": np.zeros(71)}, cache_dir=tmp_path, params=FAST, progress=False)
    with pytest.raises(FeatureMapError, match="outside 0..71"):
        build_feature_map(sae, stats={"x": {99: 1.0}}, cache_dir=tmp_path, params=FAST, progress=False)


def test_read_stat_file_npy_and_csv(tmp_path):
    np.save(tmp_path / "rate.npy", np.arange(5.0))
    name, values = read_stat_file(f"density={tmp_path / 'rate.npy'}")
    assert name == "density" and list(values) == [0, 1, 2, 3, 4]
    (tmp_path / "seg.csv").write_text("feature_id,segment,score\n0,a,1.5\n3,b,\n")
    name, values = read_stat_file(f"{tmp_path / 'seg.csv'}:segment")
    assert name == "segment" and values == {0: "a", 3: "b"}
    name, values = read_stat_file(f"s={tmp_path / 'seg.csv'}:score")
    assert name == "s" and values == {0: 1.5, 3: None}
    with pytest.raises(FeatureMapError, match="name one"):
        read_stat_file(tmp_path / "seg.csv")
    with pytest.raises(FeatureMapError, match="not found"):
        read_stat_file(tmp_path / "missing.npy")


def test_bad_input_raises_clear_errors(sae, tmp_path):
    with pytest.raises(FeatureMapError, match="has no W_dec"):
        cached_embedding(object(), None)
    with pytest.raises(FeatureMapError, match="n_neighbors"):
        MapParams(n_neighbors=1)
    with pytest.raises(FeatureMapError, match="knn must be"):
        MapParams(knn="ball-tree")
    with pytest.raises(FeatureMapError, match="cannot colour by 'nope'"):
        feature_map(sae, tmp_path, color_by="nope", params=FAST, progress=False)
    with pytest.raises(TypeError):
        feature_map(sae, tmp_path, colour_by="quality")  # an unknown keyword is an error
    assert issubclass(FeatureMapError, R1PluginError)


def test_feature_map_writes_png_and_html_with_escaped_untrusted_text(sae, tiny_db, tmp_path):
    _, db = tiny_db
    result = feature_map(sae, tmp_path, db=db, top_n=2, params=FAST, progress=False, title="<b>my</b> SAE")
    assert result.png.read_bytes()[:8] == PNG_MAGIC
    page = result.html.read_text(encoding="utf-8")
    assert (tmp_path / "feature_map_cache").is_dir()
    # Hostile labels (and the title) never appear raw: only the page's own two <script> tags.
    assert len(re.findall(r"<script", page, flags=re.IGNORECASE)) == 2
    assert HOSTILE_LABELS[1] not in page and "<b>my</b>" not in page
    assert "<title>&lt;b&gt;my&lt;/b&gt; SAE</title>" in page
    # No external resource of any kind.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, flags=re.IGNORECASE)
    assert "default-src 'none'" in page
    data = json.loads(page.split('id="fm-data">', 1)[1].split("</script>", 1)[0])
    assert data == json.loads(script_safe_json(map_payload(result.map)))
    assert data["labels"][1] == HOSTILE_LABELS[1]
    ex = result.map.examples[0][0]
    assert data["examples"]["0"][0] == [round(ex.strength, 5), ex.position, [visible(t) for t in ex.tokens]]
    assert render_page(result.map) == page


def test_script_safe_json_cannot_close_the_script_block():
    text = script_safe_json({"a": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


def test_cli_features_map_on_a_release_and_id(tmp_path, capsys, monkeypatch):
    """`r1-plugin features map <release> <id>` loads the SAE through SAE.from_pretrained: Goodfire's logic release
    (a small random SAE written into the test HF cache under Goodfire's repo id), colouring by the embedded DB."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from r1_plugin.cli import main
    from r1_plugin.testing.sae_fixtures import (
        GOODFIRE_RELEASES,
        random_goodfire_state_dict,
        write_goodfire_r1_repo,
    )

    lookup = get_pretrained_saes_directory()[GOODFIRE_RELEASES["logic"]]  # tiny dims instead of 7168 x 28672
    monkeypatch.setattr(lookup, "config_overrides", {**lookup.config_overrides, "d_in": 32, "d_sae": 96})
    state = random_goodfire_state_dict(32, 96, seed=3)
    write_goodfire_r1_repo({"logic": state})
    out = tmp_path / "map"
    code = main([
        "features", "map", GOODFIRE_RELEASES["logic"], "layer_37", "-o", str(out),
        "--labels", str(assets.FEATURES_LABELS), "--activations", str(assets.FEATURES_ACTIVATIONS),
        "--top-n", "2", "--n-epochs", "30", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert (out / "feature_map.png").read_bytes()[:8] == PNG_MAGIC
    page = (out / "feature_map.html").read_text(encoding="utf-8")
    assert "cache miss" in printed
    with FeatureDB(labels=assets.FEATURES_LABELS) as db:
        some = db.feature_ids()[0]
        assert json.dumps(db.label(some), ensure_ascii=False)[1:-1].replace("<", "\\u003c") in page
    main(["features", "map", GOODFIRE_RELEASES["logic"], "layer_37", "-o", str(out), "--n-epochs", "30",
          "--no-progress"])
    assert "cache hit" in capsys.readouterr().out
    # the same decoder from the .pt on disk (Goodfire's tied W: decoder = W.T) hits the same cache entry
    pt = tmp_path / "sae.pt"
    torch.save(state, pt)
    assert torch.equal(load_decoder(pt), state["W"].T)
    main(["features", "map", "--sae-path", str(pt), "-o", str(out), "--n-epochs", "30", "--no-progress"])
    assert "cache hit" in capsys.readouterr().out


def test_cli_features_map_on_the_embedded_sae_by_path(tmp_path, capsys):
    """`--sae-path` takes the embedded demo SAE's Goodfire .pt (loaded by path: it has no hub id)."""
    from r1_plugin.cli import main

    pt = assets.SAE_DIR / assets.SAE_FILE
    code = main(["features", "map", "--sae-path", str(pt), "-o", str(tmp_path), "--n-epochs", "30", "--no-progress",
                 "--top-n", "0", "--no-html"])
    assert code == 0
    assert (tmp_path / "feature_map.png").read_bytes()[:8] == PNG_MAGIC
    assert main(["features", "map", "--sae-path", str(pt), "x", "-o", str(tmp_path)]) == 2
    assert "either RELEASE SAE_ID or --sae-path" in capsys.readouterr().err
    assert main(["features", "map", "--sae-path", str(tmp_path / "none.pt"), "-o", str(tmp_path)]) == 2


def test_cli_map_rejects_bad_statistics_with_a_clear_error(tmp_path, capsys):
    from r1_plugin.cli import main

    pt = str(assets.SAE_DIR / assets.SAE_FILE)
    code = main(["features", "map", "--sae-path", pt, "-o", str(tmp_path), "--stat", "x=nope.txt"])
    assert code == 2
    assert "expected NAME=PATH.npy" in capsys.readouterr().err
    code = main(["features", "map", "--sae-path", pt, "-o", str(tmp_path), "--pca-dims", "lots"])
    assert code == 2
    assert "--pca-dims must be 'auto', 0 or a positive number" in capsys.readouterr().err
