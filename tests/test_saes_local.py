"""SAEs loaded by path (`r1_plugin.saes.local`): a SAELens folder, or a release folder described by sae.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from r1_plugin.demo import assets
from r1_plugin.saes.goodfire import load_pt_weights_only
from r1_plugin.saes.local import SAEPathError, load_sae_from_path


def test_release_folder_loads_goodfire_weights_with_its_config() -> None:
    """The embedded SAE's folder: W_enc is the .pt's tied W, W_dec its transpose, config from sae.yaml."""
    sae = load_sae_from_path(assets.SAE_DIR)
    raw = load_pt_weights_only(assets.SAE_DIR / assets.SAE_FILE)
    assert torch.equal(sae.W_enc, raw["W"].to(sae.W_enc.dtype))
    assert torch.equal(sae.W_dec, raw["W"].T.to(sae.W_dec.dtype))
    overrides = assets.sae_entry()["config_overrides"]
    assert sae.cfg.metadata.hook_name == overrides["hook_name"] and sae.cfg.k == overrides["k"]
    assert torch.equal(load_sae_from_path(assets.SAE_DIR, "layer_2", dtype="float64").W_dec, sae.W_dec.double())


def test_saelens_folder_and_errors(tmp_path: Path) -> None:
    cfg = StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))
    sae = SAE.from_dict(cfg.to_dict())
    sae.save_model(tmp_path / "mine")
    assert torch.equal(load_sae_from_path(tmp_path / "mine").W_dec, sae.W_dec)
    with pytest.raises(SAEPathError, match="holds no SAE"):
        load_sae_from_path(tmp_path)
    with pytest.raises(SAEPathError, match=r"has SAEs \['layer_2'\]"):
        load_sae_from_path(assets.SAE_DIR, "layer_9")


def test_steer_cli_takes_an_sae_path(capsys: pytest.CaptureFixture[str]) -> None:
    """`r1-plugin steer --sae-path <embedded SAE>` on the embedded model (both by path)."""
    from r1_plugin.cli import main

    code = main(["steer", "--model", str(assets.MODEL_DIR), "--dtype", "float32", "--sae-path", str(assets.SAE_DIR),
                 "--feature", "398", "--strength", "21", "--prompt", "What is 7 + 8?", "--max-new-tokens", "12",
                 "--no-wandb"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "feature [398]" in out.out
