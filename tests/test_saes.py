"""Goodfire's R1 SAEs through SAELens: registration, loader, safety, maths (both top-k modes), cache, catalog, CLI.

Small fixtures in Goodfire's exact format live in a per-test HF cache under the real repo id; the registry
entries' dims are shrunk for those tests (test_saes_real_shape.py covers the real shapes and entries).
"""

from __future__ import annotations

import builtins
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from sae_lens import SAE, TopKSAE
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading import pretrained_saes_directory as directory_module

from r1_plugin._patches import sae_lens as sae_lens_patch
from r1_plugin.errors import MissingFromCacheError
from r1_plugin.saes import (
    GoodfireBatchTopKSAE,
    SAEConfigError,
    SAEFileError,
    UnsafeSAEFileError,
    cache,
    goodfire,
    list_r1_saes,
    to_batch_topk,
)
from r1_plugin.saes.releases import plugin_lookups, yaml_path
from r1_plugin.testing.hub import repo_folder
from r1_plugin.testing.sae_fixtures import (
    goodfire_entry,
    random_goodfire_state_dict,
    torch_save_bytes,
    write_goodfire_r1_repo,
)

RELEASES = ("goodfire-deepseek-r1-logic", "goodfire-deepseek-r1-math")
REPO = "Goodfire/DeepSeek-R1-SAE-l37"
SMALL = {"logic": dict(d_in=16, d_sae=64, k=4), "math": dict(d_in=16, d_sae=64, k=8)}


def directory() -> dict:
    return directory_module.get_pretrained_saes_directory()


# ---------------------------------------------------------------- independent reference maths (no SAELens, no topk)


def ref_encode(x: torch.Tensor, W: torch.Tensor, b_enc: torch.Tensor, k: int, batch: bool,
               tiebreak: bool = False) -> torch.Tensor:
    """Goodfire's maths written out: relu(x W + b), then keep the k largest per token or k*n over the batch."""
    f = torch.relu(x @ W + b_enc)
    if tiebreak:
        f = (f + torch.linspace(0, 1e-6, W.shape[1])).to(f.dtype)
    rows = f.reshape(-1, f.shape[-1])
    out = torch.zeros_like(rows)
    if batch:
        order = torch.argsort(rows.flatten(), descending=True, stable=True)[: k * rows.shape[0]]
        out.view(-1)[order] = rows.flatten()[order]
    else:
        for i, row in enumerate(rows):
            keep = torch.argsort(row, descending=True, stable=True)[:k]
            out[i, keep] = row[keep]
    return out.reshape(f.shape)


def assert_same_topk(acts: torch.Tensor, ref: torch.Tensor, pre: torch.Tensor) -> None:
    """Equal up to ties (common in bfloat16): same kept values per row, each equal to relu(pre) where kept."""
    a, r = acts.reshape(-1, acts.shape[-1]), ref.reshape(-1, ref.shape[-1])
    torch.testing.assert_close(a.sort(-1).values, r.sort(-1).values, rtol=0, atol=0)
    kept = a != 0
    torch.testing.assert_close(a[kept], torch.relu(pre).reshape(a.shape)[kept], rtol=0, atol=0)


def ref_decode(f: torch.Tensor, W: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    return f @ W.T + b_dec


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def small_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty HF cache for this test only (huggingface_hub reads HF_HUB_CACHE per call)."""
    path = tmp_path / "hf"
    path.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    return path


@pytest.fixture
def small_entries(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Shrink both releases' declared dims (what a tiny-model release would declare in the yaml)."""
    for name, dims in SMALL.items():
        lookup = directory()[f"goodfire-deepseek-r1-{name}"]
        monkeypatch.setattr(lookup, "config_overrides", {**lookup.config_overrides, **dims})
    return SMALL


@pytest.fixture
def small_saes(small_cache: Path, small_entries: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Random logic (float32) and math (bfloat16) SAEs in Goodfire's format, in one commit of the real repo."""
    states = {
        "logic": random_goodfire_state_dict(16, 64, torch.float32, seed=1),
        "math": random_goodfire_state_dict(16, 64, torch.bfloat16, seed=2),
    }
    write_goodfire_r1_repo(states, math_k=SMALL["math"]["k"])
    torch.manual_seed(0)  # the tests' inputs are random but reproducible
    return states


# ---------------------------------------------------------------- registration


def test_releases_listed_next_to_saelens_own():
    d = directory()
    for release in RELEASES:
        lookup = d[release]
        assert lookup.repo_id == REPO
        assert lookup.model == "deepseek-ai/DeepSeek-R1"
        assert lookup.conversion_func == "goodfire_r1"
        assert list(lookup.saes_map) == ["layer_37"]
    assert d["goodfire-deepseek-r1-logic"].saes_map["layer_37"] == "logic/DeepSeek-R1-SAE-l37.pt"
    assert d["goodfire-deepseek-r1-math"].saes_map["layer_37"] == "math/DeepSeek-R1-SAE-l37.pt"
    assert d["goodfire-deepseek-r1-logic"].expected_l0["layer_37"] == 64
    assert d["goodfire-deepseek-r1-math"].expected_l0["layer_37"] == 128
    assert "gpt2-small-res-jb" in d and "llama_scope_r1_distill" in d  # SAELens's own releases are all still there
    assert len(d) > 100


def test_registration_idempotent_and_survives_cache_clear():
    before = directory_module.get_pretrained_saes_directory
    for _ in range(3):
        sae_lens_patch.apply()
    wrapper = directory_module.get_pretrained_saes_directory
    assert wrapper is before
    assert not getattr(wrapper.__wrapped_original__, "_r1_plugin_patched", False)  # wrapped once, not stacked
    n = len(directory())
    wrapper.cache_clear()
    fresh = directory()
    assert all(r in fresh for r in RELEASES) and len(fresh) == n
    import sae_lens.saes.sae as sae_module

    assert sae_module.get_pretrained_saes_directory is wrapper
    assert loaders.get_pretrained_saes_directory is wrapper
    assert loaders.NAMED_PRETRAINED_SAE_LOADERS["goodfire_r1"] is goodfire.goodfire_r1_huggingface_loader


def test_never_overwrites_a_release_saelens_has():
    wrapper = directory_module.get_pretrained_saes_directory
    original = wrapper.__wrapped_original__
    wrapper.cache_clear()
    try:
        theirs = directory_module.PretrainedSAELookup(
            release=RELEASES[1], repo_id="someone/else", model="m", conversion_func="sae_lens",
            saes_map={"x": "x"}, expected_var_explained={}, expected_l0={}, neuronpedia_id={},
            norm_scaling_factor={}, config_overrides=None,
        )
        original()[RELEASES[1]] = theirs  # as if SAELens's own yaml shipped this release
        assert wrapper()[RELEASES[1]] is theirs
        sae_lens_patch.apply()
        assert wrapper()[RELEASES[1]] is theirs
        assert wrapper()[RELEASES[0]] is plugin_lookups()[RELEASES[0]]
    finally:
        wrapper.cache_clear()
    assert wrapper()[RELEASES[1]] is plugin_lookups()[RELEASES[1]]


def test_never_overwrites_a_loader_saelens_has(monkeypatch: pytest.MonkeyPatch):
    def theirs(**kwargs):  # pragma: no cover - never called
        raise AssertionError

    monkeypatch.setitem(loaders.NAMED_PRETRAINED_SAE_LOADERS, "goodfire_r1", theirs)
    sae_lens_patch.apply()
    assert loaders.NAMED_PRETRAINED_SAE_LOADERS["goodfire_r1"] is theirs


def test_yaml_is_the_single_source():
    assert yaml_path().name == "pretrained_saes.yaml"
    text = yaml_path().read_text()
    for value in ("blocks.37.hook_resid_post", "Goodfire/DeepSeek-R1-SAE-l37", "k: 64", "k: 128"):
        assert value in text
    cfg = loaders.load_sae_config_from_huggingface("goodfire-deepseek-r1-logic", "layer_37")
    assert cfg["architecture"] == "topk" and cfg["k"] == 64 and cfg["d_in"] == 7168 and cfg["d_sae"] == 28672
    assert cfg["apply_b_dec_to_input"] is False
    assert cfg["metadata"]["hook_name"] == "blocks.37.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "deepseek-ai/DeepSeek-R1"
    assert loaders.load_sae_config_from_huggingface("goodfire-deepseek-r1-math", "layer_37")["k"] == 128


def test_entry_without_dims_gets_clear_error():
    with pytest.raises(SAEConfigError, match="does not declare d_in, d_sae, k.*config_overrides"):
        goodfire.get_goodfire_r1_config_from_hf(REPO, "x/y.pt", "cpu", cfg_overrides={"hook_name": "h"})
    with pytest.raises(SAEConfigError, match="exceeds d_sae"):
        goodfire.get_goodfire_r1_config_from_hf(
            REPO, "x/y.pt", "cpu", cfg_overrides=dict(d_in=4, d_sae=8, k=9, hook_name="h", model_name="m"))


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["logic", "math"])
def test_from_pretrained_loads_goodfire_format(small_saes: dict, name: str):
    state = small_saes[name]
    sae = SAE.from_pretrained(f"goodfire-deepseek-r1-{name}", "layer_37", device="cpu")
    assert isinstance(sae, TopKSAE) and not isinstance(sae, GoodfireBatchTopKSAE)
    assert sae.cfg.k == SMALL[name]["k"] and sae.cfg.d_in == 16 and sae.cfg.d_sae == 64
    assert sae.cfg.apply_b_dec_to_input is False
    assert sae.cfg.metadata.hook_name == "blocks.37.hook_resid_post"
    assert sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1"
    assert sae.W_enc.dtype == torch.float32
    torch.testing.assert_close(sae.W_enc, state["W"].float(), rtol=0, atol=0)
    torch.testing.assert_close(sae.W_dec, state["W"].float().T, rtol=0, atol=0)
    torch.testing.assert_close(sae.b_enc, state["b_enc"].float(), rtol=0, atol=0)
    torch.testing.assert_close(sae.b_dec, state["b_dec"].float(), rtol=0, atol=0)
    # W_dec has its own contiguous storage: editing the encoder leaves the decoder alone.
    assert sae.W_dec.is_contiguous() and sae.W_dec.data_ptr() != sae.W_enc.data_ptr()
    with torch.no_grad():
        sae.W_enc[0, 0] += 1.0
    assert sae.W_dec[0, 0] == state["W"].float()[0, 0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_dtype_handling(small_saes: dict, dtype: str):
    sae = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37", device="cpu", dtype=dtype)
    want = getattr(torch, dtype)
    assert all(p.dtype == want for p in sae.parameters()) and sae.cfg.dtype == dtype
    x = torch.randn(3, 16)  # float32 input: SAELens casts it to the SAE's dtype
    state = {k: v.to(want) for k, v in small_saes["math"].items()}
    acts = sae.encode(x)
    assert acts.dtype == want
    ref = ref_encode(x.to(want), state["W"], state["b_enc"], 8, batch=False)
    assert_same_topk(acts, ref, x.to(want) @ state["W"] + state["b_enc"])


def test_device_handling(small_saes: dict):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        sae = SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37", device=device)
        assert sae.cfg.device == device and all(p.device.type == device for p in sae.parameters())
        x = torch.randn(2, 16, device=device)
        assert sae.encode(x).device.type == device
        batch = to_batch_topk(sae)
        assert batch.encode(x).device.type == device
    meta = SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37", device="meta")
    assert meta.W_enc.is_meta


# ---------------------------------------------------------------- maths: per-token (default) and batch top-k


@pytest.mark.parametrize("name", ["logic", "math"])
def test_per_token_topk_matches_reference(small_saes: dict, name: str):
    sae = SAE.from_pretrained(f"goodfire-deepseek-r1-{name}", "layer_37", dtype="float32")
    W, b_enc, b_dec = (small_saes[name][key].float() for key in ("W", "b_enc", "b_dec"))
    k = SMALL[name]["k"]
    torch.manual_seed(0)
    for x in (torch.randn(16), torch.randn(1, 16), torch.randn(7, 16), torch.randn(2, 5, 16)):
        acts = sae.encode(x)
        torch.testing.assert_close(acts, ref_encode(x, W, b_enc, k, batch=False))
        assert ((acts > 0).sum(-1) <= k).all()
        torch.testing.assert_close(sae.decode(acts), ref_decode(acts, W, b_dec))
        torch.testing.assert_close(sae(x), ref_decode(ref_encode(x, W, b_enc, k, False), W, b_dec))


@pytest.mark.parametrize("tiebreak", [False, True])
@pytest.mark.parametrize("name", ["logic", "math"])
def test_batch_topk_matches_reference(small_saes: dict, name: str, tiebreak: bool):
    sae = GoodfireBatchTopKSAE.from_pretrained(f"goodfire-deepseek-r1-{name}", "layer_37", tiebreak=tiebreak)
    assert isinstance(sae, GoodfireBatchTopKSAE) and sae.cfg.architecture() == "goodfire_batch_topk"
    W, b_enc, b_dec = (small_saes[name][key].float() for key in ("W", "b_enc", "b_dec"))
    k = SMALL[name]["k"]
    torch.manual_seed(1)
    for x in (torch.randn(16), torch.randn(1, 16), torch.randn(9, 16), torch.randn(3, 4, 16)):
        acts = sae.encode(x)
        ref = ref_encode(x, W, b_enc, k, batch=True, tiebreak=tiebreak)
        torch.testing.assert_close(acts, ref, rtol=0, atol=1e-6)
        assert torch.equal(acts > 0, ref > 0)
        n_tokens = x.numel() // 16
        assert int((acts > 0).sum()) == k * n_tokens  # relu leaves far more than k*n positive here
        torch.testing.assert_close(sae.decode(acts), ref_decode(acts, W, b_dec))


def test_batch_and_per_token_agree_on_one_token_and_differ_on_batches(small_saes: dict):
    per_token = SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    batch = to_batch_topk(per_token)
    assert batch.W_enc.data_ptr() == per_token.W_enc.data_ptr()  # shares weights, no copy
    x1 = torch.randn(1, 16)
    torch.testing.assert_close(batch.encode(x1), per_token.encode(x1), rtol=0, atol=0)
    # Tokens of very different norms: batch top-k gives the big token more than k latents.
    x = torch.randn(4, 16) * torch.tensor([[8.0], [0.2], [0.2], [0.2]])
    l0_batch = (batch.encode(x) > 0).sum(-1)
    l0_token = (per_token.encode(x) > 0).sum(-1)
    assert l0_token.tolist() == [4, 4, 4, 4]
    assert l0_batch.sum() == 16 and l0_batch[0] > 4


def test_batch_topk_tiebreak_is_deterministic_in_feature_order(small_cache: Path, small_entries: dict):
    state = random_goodfire_state_dict(16, 64, torch.float32, seed=3)
    state["b_enc"][:] = -100.0  # only latents 10 and 11 can fire: the other k-2 picks are ties at zero
    state["b_enc"][10] = state["b_enc"][11] = 5.0
    write_goodfire_r1_repo({"logic": state})
    x = torch.randn(1, 16)
    plain = GoodfireBatchTopKSAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    tied = GoodfireBatchTopKSAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37", tiebreak=True)
    torch.testing.assert_close(plain.encode(x), ref_encode(x, state["W"], state["b_enc"], 4, True))
    assert set(torch.nonzero(plain.encode(x)[0]).flatten().tolist()) <= {10, 11}
    acts = tied.encode(x)
    torch.testing.assert_close(acts, ref_encode(x, state["W"], state["b_enc"], 4, True, tiebreak=True),
                               rtol=0, atol=0)
    # Goodfire's linspace(0, 1e-6, d_sae) is kept in the values and picks the highest-index zeros.
    picked = set(torch.nonzero(acts[0]).flatten().tolist())
    assert picked == {10, 11, 62, 63}
    assert 0 < acts[0, 62] < acts[0, 63] <= 1e-6


def test_batch_topk_from_yaml_architecture(small_saes: dict, monkeypatch: pytest.MonkeyPatch):
    lookup = directory()["goodfire-deepseek-r1-math"]
    monkeypatch.setattr(lookup, "config_overrides", {**lookup.config_overrides, "architecture": "goodfire_batch_topk"})
    sae = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")
    assert type(sae) is GoodfireBatchTopKSAE and sae.cfg.k == 8
    x = torch.randn(5, 16)
    W, b_enc = small_saes["math"]["W"].float(), small_saes["math"]["b_enc"].float()
    torch.testing.assert_close(sae.encode(x), ref_encode(x, W, b_enc, 8, batch=True), rtol=0, atol=1e-6)


def test_batch_topk_bfloat16(small_saes: dict):
    sae = GoodfireBatchTopKSAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37", dtype="bfloat16",
                                               tiebreak=True)
    state = small_saes["math"]
    x = torch.randn(6, 16).to(torch.bfloat16)
    ref = ref_encode(x, state["W"], state["b_enc"], 8, batch=True, tiebreak=True)
    acts = sae.encode(x)
    assert acts.dtype == torch.bfloat16
    pre = (torch.relu(x @ state["W"] + state["b_enc"]) + torch.linspace(0, 1e-6, 64)).to(torch.bfloat16)
    assert_same_topk(acts.flatten(), ref.flatten(), pre.flatten())
    assert int((acts > 0).sum()) == 8 * 6


# ---------------------------------------------------------------- safety and errors


class _CodePayload:
    """Unpickling this creates `marker` (via builtins.open): stands for any code hidden in a .pt."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _malicious_pt(marker: Path) -> bytes:
    state = random_goodfire_state_dict(16, 64, seed=4)
    state["b_dec"] = _CodePayload(marker)  # type: ignore[assignment]
    return torch_save_bytes(state)


def test_pickle_with_code_is_refused_and_never_run(small_cache: Path, small_entries: dict, tmp_path: Path):
    control_marker, marker = tmp_path / "control-ran", tmp_path / "payload-ran"
    control = tmp_path / "control.pt"
    control.write_bytes(_malicious_pt(control_marker))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(control, weights_only=False)  # the fixture really carries code: unsafe loading runs it
    assert control_marker.exists()

    write_goodfire_r1_repo({"logic": _malicious_pt(marker)})
    with pytest.raises(UnsafeSAEFileError, match="weights_only=True.*never loads SAE files unsafely"):
        SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    assert not marker.exists()
    assert not list(small_cache.rglob("*.safetensors"))  # nothing cached from a refused file


def test_truncated_and_corrupt_files_get_clear_errors(small_cache: Path, small_entries: dict):
    good = torch_save_bytes(random_goodfire_state_dict(16, 64, seed=5))
    for bad in (good[: len(good) // 2], b"this is not a torch file", b""):
        write_goodfire_r1_repo({"logic": bad})
        with pytest.raises(SAEFileError, match="corrupt or truncated.*force_download=True"):
            SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")


def test_wrong_keys_and_shapes_get_clear_errors(small_cache: Path, small_entries: dict):
    write_goodfire_r1_repo({"logic": {"encoder.weight": torch.zeros(64, 16)}})
    with pytest.raises(SAEFileError, match="lacks W, b_enc, b_dec"):
        SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    write_goodfire_r1_repo({"logic": random_goodfire_state_dict(16, 32, seed=6)})
    with pytest.raises(SAEFileError, match=r"disagree with its registry entry.*W \(16, 32\).*\(16, 64\)"):
        SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")


@pytest.mark.parametrize(("name", "key", "index", "value"), [
    ("logic", "W", (3, 17), float("nan")), ("math", "b_dec", (5,), float("inf")), ("logic", "b_enc", (0,), -float("inf")),
])
def test_non_finite_weights_are_refused_naming_file_and_tensor(small_cache: Path, small_entries: dict, name: str,
                                                                key: str, index: tuple, value: float):
    """One NaN in W (issue #20): it used to load and turn every steered logit into NaN."""
    state = random_goodfire_state_dict(16, 64, torch.bfloat16 if name == "math" else torch.float32, seed=8)
    state[key][index] = value
    write_goodfire_r1_repo({name: state}, math_k=SMALL["math"]["k"])
    entry = goodfire_entry(name)
    with pytest.raises(SAEFileError) as info:
        SAE.from_pretrained(f"goodfire-deepseek-r1-{name}", "layer_37")
    msg = str(info.value)
    assert f"{entry['repo_id']}/{entry['path']}" in msg and f"tensor `{key}`" in msg, msg
    assert f"1 non-finite value(s) (NaN or inf), the first at {list(index)}" in msg and "force_download=True" in msg
    with pytest.raises(SAEFileError, match=f"tensor `{key}`"):  # its safetensors copy is refused the same way
        SAE.from_pretrained(f"goodfire-deepseek-r1-{name}", "layer_37")


def test_values_that_overflow_the_requested_dtype_are_refused():
    raw = random_goodfire_state_dict(16, 64, seed=9)
    raw["W"][2, 3] = 1e6  # finite in float32, inf in float16
    cfg = goodfire.goodfire_config("here", {"d_in": 16, "d_sae": 64, "k": 4, "hook_name": "h", "model_name": "m",
                                            "dtype": "float16"})
    with pytest.raises(SAEFileError, match=r"here: tensor `W` .* the first at \[2, 3\] after casting to torch.float16.*"
                                           r"dtype='float32'"):
        goodfire.convert_state_dict(raw, cfg, "here")
    assert goodfire.convert_state_dict(raw, {**cfg, "dtype": "float32"}, "here")["W_enc"][2, 3] == 1e6


def test_real_entry_rejects_file_of_other_shape(small_cache: Path):
    write_goodfire_r1_repo({"logic": random_goodfire_state_dict(16, 64, seed=7)})
    with pytest.raises(SAEFileError, match=r"d_in=7168, d_sae=28672.*W \(16, 64\)"):
        SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")


def test_entry_contradicting_repo_config_json(small_cache: Path, small_entries: dict):
    write_goodfire_r1_repo({"math": random_goodfire_state_dict(16, 64, torch.bfloat16)}, math_k=32)
    with pytest.raises(SAEConfigError, match="contradicts the repo's math/config.json.*k: entry 8 vs"):
        SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")


def test_missing_file_offline_names_repo_file_and_fix(small_cache: Path):
    with pytest.raises(MissingFromCacheError) as info:
        SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")
    msg = str(info.value)
    assert "Goodfire/DeepSeek-R1-SAE-l37" in msg and "math/DeepSeek-R1-SAE-l37.pt" in msg
    assert "hf download Goodfire/DeepSeek-R1-SAE-l37 math/DeepSeek-R1-SAE-l37.pt" in msg
    assert "HF_HUB_OFFLINE" in msg


# ---------------------------------------------------------------- safetensors copy


def test_safetensors_copy_written_then_used(small_saes: dict, monkeypatch: pytest.MonkeyPatch):
    first = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")
    snapshot_file = next((repo_folder(REPO) / "snapshots").glob("*/math/DeepSeek-R1-SAE-l37.pt"))
    blob = snapshot_file.resolve()
    copy = repo_folder(REPO) / "r1_plugin" / "safetensors" / f"{blob.name}.safetensors"
    assert cache.copy_path(snapshot_file) == copy and copy.is_file()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called although a safetensors copy exists")

    with monkeypatch.context() as patched:
        patched.setattr(goodfire.torch, "load", no_unpickling)
        second = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37", dtype="bfloat16")
    for name, param in first.state_dict().items():
        torch.testing.assert_close(second.state_dict()[name].float(), param, rtol=0, atol=0)

    # A re-uploaded file (new bytes -> new blob hash) gets its own copy; the stale one is not used.
    new_state = random_goodfire_state_dict(16, 64, torch.bfloat16, seed=9)
    write_goodfire_r1_repo({"math": new_state}, math_k=8)
    third = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")
    torch.testing.assert_close(third.W_enc, new_state["W"].float(), rtol=0, atol=0)
    assert len(list(copy.parent.glob("*.safetensors"))) == 2


def test_damaged_copy_is_rebuilt_and_switch_turns_copies_off(small_saes: dict, small_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    (copy,) = (repo_folder(REPO) / "r1_plugin" / "safetensors").glob("*.safetensors")
    copy.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged safetensors copy"):
        sae = SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    torch.testing.assert_close(sae.W_enc, small_saes["logic"]["W"], rtol=0, atol=0)
    assert copy.stat().st_size > 1000

    monkeypatch.setenv(cache.ENV_SWITCH, "0")
    copy.unlink()
    SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    assert not copy.exists()


def test_copy_errors_other_than_damage_propagate_and_keep_the_copy(small_saes: dict, monkeypatch: pytest.MonkeyPatch):
    """Only a damaged or unreadable copy falls back to the original (issue #21): out of memory is not 'damaged'."""
    SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    (copy,) = (repo_folder(REPO) / "r1_plugin" / "safetensors").glob("*.safetensors")

    def out_of_memory(*args, **kwargs):
        raise MemoryError("cannot allocate 800 MiB")

    monkeypatch.setattr(cache, "load_file", out_of_memory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MemoryError):
            SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37")
    assert copy.is_file()


def test_copy_path_outside_hf_cache(tmp_path: Path):
    loose = tmp_path / "sae.pt"
    loose.write_bytes(b"x")
    assert cache.copy_path(loose) is None


# ---------------------------------------------------------------- catalog and CLI


def test_catalog_lists_r1_saes():
    infos = list_r1_saes()
    by_release = {(i.release, i.sae_id): i for i in infos}
    logic = by_release[("goodfire-deepseek-r1-logic", "layer_37")]
    math = by_release[("goodfire-deepseek-r1-math", "layer_37")]
    assert infos[0].source == "r1_plugin" and infos[1].source == "r1_plugin"
    assert (logic.k, math.k) == (64, 128)
    assert logic.hook_name == math.hook_name == "blocks.37.hook_resid_post"
    assert logic.dataset == "Goodfire/r1-collect" and math.dataset == "open-r1/OpenR1-Math-220k"
    assert "LogiQA" in (logic.trained_on or "") and "OpenR1-Math" in (math.trained_on or "")
    assert "feature_database" in logic.links and "publication" in math.links
    qres = by_release[("deepseek-r1-distill-llama-8b-qresearch", "blocks.19.hook_resid_post")]
    assert qres.hook_name == "blocks.19.hook_resid_post" and qres.model == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    scope = [i for i in infos if i.release == "llama_scope_r1_distill"]
    assert len(scope) == len(directory()["llama_scope_r1_distill"].saes_map)
    assert all(i.hook_name and i.hook_name.startswith("blocks.") for i in scope)
    assert {i.model for i in infos} <= {"deepseek-ai/DeepSeek-R1", *(s.hf_id for s in __import__(
        "r1_plugin").list_models())}
    only_r1 = list_r1_saes(model="deepseek-ai/DeepSeek-R1")
    assert [i.release for i in only_r1] == list(RELEASES)



def test_catalog_accepts_model_aliases_and_any_case():
    # The aliases r1_plugin registers (r1, r1-distill-llama-8b, ...) name the same models: same SAEs, not [].
    for alias, hf_id in (("r1", "deepseek-ai/DeepSeek-R1"), ("r1-distill-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
                         ("DEEPSEEK-AI/deepseek-r1", "deepseek-ai/DeepSeek-R1")):
        expected = list_r1_saes(model=hf_id)
        assert expected and list_r1_saes(model=alias) == expected

def test_cli_saes_list(capsys: pytest.CaptureFixture[str]):
    from r1_plugin.cli import main

    assert main(["saes", "list"]) == 0
    out = capsys.readouterr().out
    assert "goodfire-deepseek-r1-math" in out and "blocks.37.hook_resid_post" in out and "128" in out
    assert "llama_scope_r1_distill" in out
    assert main(["saes", "list", "--model", "deepseek-ai/DeepSeek-R1", "--links"]) == 0
    out = capsys.readouterr().out
    assert "llama_scope" not in out and "s3://goodfire-r1-features/math/" in out


def test_goodfire_entry_matches_spec():
    logic, math = goodfire_entry("logic"), goodfire_entry("math")
    assert (logic["d_in"], logic["d_sae"], logic["k"]) == (7168, 28672, 64)
    assert (math["d_in"], math["d_sae"], math["k"]) == (7168, 28672, 128)
    assert logic["architecture"] == math["architecture"] == "topk"
