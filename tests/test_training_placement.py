"""SAE training with the SAE in another dtype (and on its own device setting) than the model it reads."""

from __future__ import annotations

from pathlib import Path

import torch
from test_training import CONTEXT, DISTILL, TEXTS, _tiny_cfg, tiny_distill  # noqa: F401
from transformers import AutoTokenizer

from r1_plugin.training import tokenized_dataset, train_sae

HOOK = "blocks.0.hook_resid_post"


def test_float32_sae_trains_on_a_bfloat16_model(tiny_distill: str, tmp_path: Path) -> None:  # noqa: F811
    """The model runs in bfloat16 on `llm_device`, the SAE trains in float32 on `device`; what the SAE reads is the
    model's activation, cast to float32."""
    cfg = _tiny_cfg(tiny_distill, HOOK, tmp_path, dtype="float32", device="cpu", llm_device="cpu",
                    model_from_pretrained_kwargs={"dtype": "bfloat16"}, log_to_wandb=False)
    assert cfg.llm_device == "cpu" and cfg.model_from_pretrained_kwargs["dtype"] == "bfloat16"
    dataset = tokenized_dataset(AutoTokenizer.from_pretrained(tiny_distill), TEXTS, CONTEXT)
    result = train_sae(cfg, dataset)
    model, sae = result.runner.model, result.sae
    assert model.cfg.dtype == torch.bfloat16
    assert sae.W_dec.dtype == torch.float32 and sae.W_enc.device == torch.device("cpu")
    tokens = torch.as_tensor(dataset[0]["input_ids"]).reshape(1, -1)
    with torch.no_grad():
        acts = model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
        assert acts.dtype == torch.bfloat16
        # By hand: ReLU((x - b_dec) W_enc + b_enc) on the float32 value of the bfloat16 activation.
        x = acts.float()
        want = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        torch.testing.assert_close(sae.encode(acts), want, rtol=1e-5, atol=1e-5)
        store = result.runner.activations_store.get_activations(tokens)
    torch.testing.assert_close(store.reshape(x.shape).float(), x, rtol=0, atol=0)
