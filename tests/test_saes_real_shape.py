"""Goodfire's math SAE at its real shapes (7168 x 28672, bfloat16 on disk, random values) through the real registry
entry, plus the opt-in hub check of Goodfire's published top-5 latents.

The ~411 MB fixture is written once per module; both loads (unpickling, then the safetensors copy) use it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TopKSAE
from test_saes import assert_same_topk, ref_decode, ref_encode

from r1_plugin.saes import cache, goodfire, to_batch_topk
from r1_plugin.testing.hub import repo_folder
from r1_plugin.testing.sae_fixtures import goodfire_entry, write_real_shape_goodfire

D_IN, D_SAE, K = 7168, 28672, 128


@pytest.fixture(scope="module")
def real_math(hf_cache: Path) -> dict[str, torch.Tensor]:
    """Goodfire's math SAE file at the real shapes, in the session HF cache under the real repo id."""
    state, _ = write_real_shape_goodfire("math", seed=0)
    assert state["W"].shape == (D_IN, D_SAE) and state["W"].dtype == torch.bfloat16
    return state


def test_real_shape_math_loads_and_encodes_like_goodfire(real_math: dict[str, torch.Tensor]):
    sae = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37", device="cpu", dtype="float32")
    assert isinstance(sae, TopKSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (D_IN, D_SAE, K)
    assert sae.cfg.apply_b_dec_to_input is False
    assert sae.cfg.metadata.hook_name == "blocks.37.hook_resid_post"
    assert sae.cfg.metadata.model_name == "deepseek-ai/DeepSeek-R1"
    W = real_math["W"].float()
    b_enc, b_dec = real_math["b_enc"].float(), real_math["b_dec"].float()
    assert torch.equal(sae.W_enc, W) and torch.equal(sae.b_enc, b_enc) and torch.equal(sae.b_dec, b_dec)
    assert sae.W_dec.shape == (D_SAE, D_IN) and sae.W_dec.is_contiguous()
    assert sae.W_dec.data_ptr() != sae.W_enc.data_ptr()
    rows = torch.arange(0, D_SAE, 997)  # a full strided comparison costs seconds here: check spread-out rows
    assert torch.equal(sae.W_dec[rows], W[:, rows].T)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, D_IN, generator=gen) * 6.31 / D_IN**0.5 * 10  # residual-like norms
    with torch.no_grad():
        acts = sae.encode(x)
        torch.testing.assert_close(acts, ref_encode(x, W, b_enc, K, batch=False), rtol=0, atol=1e-5)
        assert ((acts > 0).sum(-1) <= K).all()
        torch.testing.assert_close(sae.decode(acts), ref_decode(acts, W, b_dec), rtol=1e-5, atol=1e-4)
        batch = to_batch_topk(sae)
        batch_acts = batch.encode(x)
        ref = ref_encode(x, W, b_enc, K, batch=True)
        assert_same_topk(batch_acts.flatten(), ref.flatten(), (x @ W + b_enc).flatten())
        one = x[:1]  # one token: batch top-k and per-token top-k agree
        torch.testing.assert_close(batch.encode(one), sae.encode(one), rtol=0, atol=0)
    del sae, batch
    gc.collect()


def test_real_shape_second_load_uses_safetensors_copy(real_math: dict[str, torch.Tensor],
                                                     monkeypatch: pytest.MonkeyPatch):
    repo = goodfire_entry("math")["repo_id"]
    snapshot_file = next((repo_folder(repo) / "snapshots").glob("*/math/DeepSeek-R1-SAE-l37.pt"))
    copy = cache.copy_path(snapshot_file)
    if copy is None or not copy.is_file():  # this test may run alone: make the first load now
        SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37")
        copy = cache.copy_path(snapshot_file)
    assert copy is not None and copy.is_file() and copy.parent.parent.parent == repo_folder(repo)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called although a safetensors copy exists")

    monkeypatch.setattr(goodfire.torch, "load", no_unpickling)
    sae = SAE.from_pretrained("goodfire-deepseek-r1-math", "layer_37", dtype="bfloat16")
    assert sae.W_enc.dtype == torch.bfloat16
    assert torch.equal(sae.W_enc, real_math["W"]) and torch.equal(sae.b_enc, real_math["b_enc"])
    del sae
    gc.collect()


# ---------------------------------------------------------------- opt-in: the real SAEs from the hub

HUB_SWITCH = "R1_PLUGIN_HUB_TESTS"
SAMPLE_ACTS_URL = "https://github.com/goodfire-ai/r1-interpretability/raw/main/sample_acts.pt"
# Goodfire's notebook output for sample_acts (shared/reference/goodfire-r1-release.md).
PUBLISHED_TOP5 = {
    "goodfire-deepseek-r1-logic": ("float32", [26850, 14306, 24913, 11430, 11884],
                                   [2.45091, 1.31701, 1.08686, 1.01920, 0.91637]),
    "goodfire-deepseek-r1-math": ("bfloat16", [7464, 3477, 15072, 21848, 4672],
                                  [1.1171875, 0.796875, 0.75, 0.73046875, 0.6484375]),
}


@pytest.mark.hub
@pytest.mark.skipif(os.environ.get(HUB_SWITCH) != "1",
                    reason=f"needs Hugging Face Hub access and ~1.2 GB of downloads: set {HUB_SWITCH}=1 to run")
@pytest.mark.parametrize("release", sorted(PUBLISHED_TOP5))
def test_published_top5_of_sample_acts(release: str, tmp_path: Path):
    """Download the real SAE (in a clean process: the suite itself is offline) and check Goodfire's top-5."""
    dtype, indices, values = PUBLISHED_TOP5[release]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                              "HF_HUB_CACHE", "HF_HOME")}
    if os.environ.get("R1_PLUGIN_HUB_CACHE"):
        env["HF_HUB_CACHE"] = os.environ["R1_PLUGIN_HUB_CACHE"]
    sample = os.environ.get("R1_PLUGIN_SAMPLE_ACTS", "")
    script = textwrap.dedent(f"""
        import json, sys, urllib.request
        import torch, r1_plugin
        from sae_lens import SAE
        path = {sample!r} or {str(tmp_path / "sample_acts.pt")!r}
        if not {sample!r}:
            urllib.request.urlretrieve({SAMPLE_ACTS_URL!r}, path)
        x = torch.load(path, weights_only=True)
        sae = SAE.from_pretrained({release!r}, "layer_37", dtype={dtype!r})
        top = sae.encode(x.reshape(1, -1)).flatten().float().topk(5)
        print(json.dumps([top.indices.tolist(), top.values.tolist()]))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    got_indices, got_values = json.loads(out.stdout.strip().splitlines()[-1])
    assert got_indices == indices
    torch.testing.assert_close(torch.tensor(got_values), torch.tensor(values), rtol=2e-2, atol=1e-3)
