"""SAELens's SAETransformerBridge.boot_transformers takes keep_fp8 too (it calls TransformerBridge's), with the same
numbers as the plain bridge, and an SAE spliced in reads the same activations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401
from r1_plugin.models.deepseek_v3.fp8_weights import Fp8Weight
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

pytestmark = pytest.mark.bridge


def test_sae_transformer_bridge_keep_fp8(tmp_path: Path) -> None:
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens.model_bridge import TransformerBridge

    config = tiny_config(num_hidden_layers=2)
    write_tiny_checkpoint(config=config, seed=3, storage="fp8", block_size=(16, 16), folder=tmp_path / "c")
    path = str(tmp_path / "c")
    sae_bridge = SAETransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32, keep_fp8=True)
    plain = TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32, keep_fp8=False)
    assert isinstance(sae_bridge, SAETransformerBridge)
    assert any(isinstance(m, Fp8Weight) for m in sae_bridge.original_model.modules())
    toks = torch.randint(2, config["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    hook = "blocks.1.hook_resid_pre"
    torch.manual_seed(0)
    sae = SAE.from_dict(StandardSAEConfig(d_in=config["hidden_size"], d_sae=64,
                                          metadata=SAEMetadata(hook_name=hook)).to_dict())
    with torch.no_grad():
        sae.W_enc.normal_()
        assert torch.equal(sae_bridge(toks), plain(toks))
        _, cache = plain.run_with_cache(toks)
        expected = sae.encode(cache["blocks.1.hook_in"])
        _, sae_cache = sae_bridge.run_with_cache_with_saes(toks, saes=[sae])
    acts = sae_cache[sae_bridge.get_sae_hook_name(sae)]
    assert (acts > 0).any() and torch.equal(acts, expected)
    with pytest.raises(TypeError, match="keep_fp9"):
        SAETransformerBridge.boot_transformers(path, keep_fp9=True)
