"""SAEs loaded by path (`r1_plugin.saes.sae_folders`): a SAELens folder, or a release folder described by sae.yaml."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file

from r1_plugin.demo import assets
from r1_plugin.errors import R1PluginError
from r1_plugin.saes.goodfire import SAEFileError, load_pt_weights_only
from r1_plugin.saes.sae_folders import SAEPathError, load_sae_from_path


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


def _saelens_folder(tmp_path: Path) -> tuple[Path, Any]:
    cfg = StandardSAEConfig(d_in=8, d_sae=16, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))
    sae = SAE.from_dict(cfg.to_dict())
    sae.save_model(tmp_path / "mine")
    return tmp_path / "mine", sae


def _rewrite(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(folder / "sae_weights.safetensors")
    edit(tensors)
    save_file(tensors, folder / "sae_weights.safetensors")


def _set_nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors["W_dec"][3, 2] = float("nan")


def _drop_b_enc(tensors: dict[str, torch.Tensor]) -> None:
    del tensors["b_enc"]


def _short_w_dec(tensors: dict[str, torch.Tensor]) -> None:
    tensors["W_dec"] = tensors["W_dec"][:-1].contiguous()


@pytest.mark.parametrize(("damage", "words"), [
    ("truncated", r"sae_weights.safetensors is not a readable safetensors file, likely truncated"),
    ("garbage_cfg", r"cfg.json is not valid JSON"),
    ("nan", r"sae_weights.safetensors: tensor `W_dec` \(16, 8\) holds 1 non-finite value\(s\).*first at \[3, 2\]"),
    ("missing_key", r"sae_weights.safetensors does not fit its cfg.json \(.*Missing key\(s\).*b_enc"),
    ("wrong_shape", r"sae_weights.safetensors does not fit its cfg.json \(.*size mismatch for W_dec"),
    ("no_weights", r"has cfg.json but no sae_weights.safetensors"),
])
def test_damaged_saelens_folder_names_file_and_fix(tmp_path: Path, damage: str, words: str) -> None:
    """Each used to be a raw SafetensorError / JSONDecodeError / RuntimeError, or (NaN) to load unchecked."""
    folder, _ = _saelens_folder(tmp_path)
    weights = folder / "sae_weights.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage_cfg":
        (folder / "cfg.json").write_text('{"d_in": 8, ')
    elif damage == "no_weights":
        weights.unlink()
    else:
        _rewrite(folder, {"nan": _set_nan, "missing_key": _drop_b_enc, "wrong_shape": _short_w_dec}[damage])
    with pytest.raises(R1PluginError, match=words) as info:
        load_sae_from_path(folder)
    assert str(folder) in str(info.value) and "save the SAE again" in str(info.value)
    assert isinstance(info.value, SAEPathError if damage == "no_weights" else SAEFileError)


def test_release_folder_with_nan_weights_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "release"
    shutil.copytree(assets.SAE_DIR, folder)
    raw = load_pt_weights_only(folder / assets.SAE_FILE)
    raw["b_enc"][7] = float("nan")
    torch.save(raw, folder / assets.SAE_FILE)
    with pytest.raises(SAEFileError, match=rf"{assets.SAE_FILE}: tensor `b_enc` .*the first at \[7\]"):
        load_sae_from_path(folder)
