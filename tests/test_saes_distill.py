"""SAELens's own `llama_scope_r1_distill` release attaches to r1_plugin's R1-Distill-Llama model at its hook.

A tiny random DeepSeek-R1-Distill-Llama-8B (d_model 64, 2 layers) and a tiny Llama Scope R1-Distill SAE in that
release's real layout (`<mix>/L1R/config.json` declaring d_model 64, `sae_weights.safetensors` with lm-saes key
names) sit in the temp HF cache under the real repo ids; both load by name through the stock code paths.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer

from r1_plugin.saes import list_r1_saes
from r1_plugin.testing.distill_checkpoints import write_tiny_distill
from r1_plugin.testing.sae_fixtures import LLAMA_SCOPE_R1_RELEASE, write_llama_scope_r1_distill_sae

MODEL = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
SAE_ID = "l1r_800m_slimpajama"
LAYER = 1


@pytest.fixture(scope="module")
def distill_and_sae(hf_cache):
    """The tiny distill as a HookedSAETransformer, the SAE, and the SAE file's raw tensors."""
    write_tiny_distill(MODEL)
    raw, _ = write_llama_scope_r1_distill_sae(SAE_ID, layer=LAYER, d_model=64, expansion_factor=4, seed=0)
    model = HookedSAETransformer.from_pretrained_no_processing(MODEL, device="cpu")
    sae = SAE.from_pretrained(LLAMA_SCOPE_R1_RELEASE, SAE_ID, device="cpu")
    return model, sae, raw


def manual_jumprelu_encode(x: torch.Tensor, raw: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """Llama Scope's encode from the file's tensors; SAELens folds the release's norm_scaling_factor into W_enc."""
    pre = (x * scale) @ raw["encoder.weight"].T + raw["encoder.bias"]
    return torch.relu(pre) * (pre > raw["log_jumprelu_threshold"].exp())


def test_sae_matches_model_and_catalog(distill_and_sae):
    model, sae, _ = distill_and_sae
    assert sae.cfg.d_in == model.cfg.d_model == 64 and sae.cfg.d_sae == 256
    hook = sae.cfg.metadata.hook_name
    assert hook == f"blocks.{LAYER}.hook_resid_post" and hook in model.hook_dict
    (info,) = [i for i in list_r1_saes(MODEL) if i.release == LLAMA_SCOPE_R1_RELEASE and i.sae_id == SAE_ID]
    assert info.hook_name == hook  # the catalog names the hook the loader reads from the SAE's config.json


def test_attached_sae_acts_and_error_term(distill_and_sae):
    from sae_lens.loading.pretrained_saes_directory import get_norm_scaling_factor

    model, sae, raw = distill_and_sae
    hook = sae.cfg.metadata.hook_name
    tokens = torch.tensor([[0, 5, 17, 42, 99, 7, 300, 11]])
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(tokens)
        model.add_sae(sae, use_error_term=True)
        try:
            logits, cache = model.run_with_cache(tokens)
        finally:
            model.reset_saes()
        model.add_sae(sae, use_error_term=False)
        try:
            spliced_logits = model(tokens)
        finally:
            model.reset_saes()

    x = clean_cache[hook]
    torch.testing.assert_close(cache[f"{hook}.hook_sae_input"], x, rtol=0, atol=0)
    scale = get_norm_scaling_factor(LLAMA_SCOPE_R1_RELEASE, SAE_ID)
    assert scale is not None and scale > 1
    acts = cache[f"{hook}.hook_sae_acts_post"]
    torch.testing.assert_close(acts, manual_jumprelu_encode(x, raw, scale), rtol=1e-5, atol=1e-5)
    assert (acts > 0).any() and (acts == 0).any()
    recons = (acts @ raw["decoder.weight"].T + raw["decoder.bias"]) / scale
    torch.testing.assert_close(cache[f"{hook}.hook_sae_recons"], recons, rtol=1e-5, atol=1e-5)
    # With the error term the SAE is an exact identity on the residual stream: logits equal the clean run.
    torch.testing.assert_close(logits, clean_logits, rtol=1e-5, atol=1e-5)
    # Without it the reconstruction error of a random SAE changes the logits: the SAE really was spliced in.
    assert not torch.allclose(spliced_logits, clean_logits, atol=1e-3)
