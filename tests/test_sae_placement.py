"""SAE work when the SAE is on another device or in another dtype than the hooked layer (r1_plugin.saes.sae_devices):
steering (add/clamp/ablate), the read-outs, the sweep and harvesting give what a by-hand computation gives.

The second device is `r1_plugin.testing.fake_device`: on this CPU-only machine its tensors fail exactly where
tensors of two real devices would be mixed, so every caller that forgot a move would raise here. The GPU check
(benchmarks/gpu_check.py) covers real devices.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from r1_plugin.chat import format_r1_prompt
from r1_plugin.features import harvest
from r1_plugin.saes.sae_devices import decode_on_sae, encode_on_sae, on_sae, sae_placement
from r1_plugin.steering import FromPosition, encode_features, steer
from r1_plugin.steering.sweep import sweep_strengths
from r1_plugin.testing.distill_checkpoints import write_tiny_distill
from r1_plugin.testing.fake_device import FAKE_DEVICE, FakeSecondDevice, put_on_fake_device

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
HOOK = "blocks.0.hook_resid_post"
START = 4  # the gate opens here


def make_sae(d_in: int, dtype: torch.dtype = torch.float32) -> SAE:
    """A random standard SAE (b_dec applied to the input) whose features fire often, in `dtype`."""
    sae = SAE.from_dict(StandardSAEConfig(d_in=d_in, d_sae=48, metadata=SAEMetadata(hook_name=HOOK)).to_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.2)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen) * 0.3)
        sae.b_enc.fill_(0.5)
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen) * 0.1)
    return sae.eval().to(dtype=dtype)


def by_hand_encode(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """ReLU((x - b_dec) W_enc + b_enc), in the SAE's dtype."""
    xs = x.to(sae.W_enc.dtype)
    return torch.relu((xs - sae.b_dec) @ sae.W_enc + sae.b_enc)


@pytest.fixture(scope="module")
def models(hf_cache: Any) -> dict[torch.dtype, HookedTransformer]:
    write_tiny_distill(QWEN, seed=0)
    return {
        dtype: HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", dtype=dtype)
        for dtype in (torch.float32, torch.bfloat16)
    }


@pytest.fixture(scope="module")
def tokens(models: dict[torch.dtype, HookedTransformer]) -> torch.Tensor:
    model = models[torch.float32]
    return model.tokenizer(format_r1_prompt(model, "What is two plus two?"), add_special_tokens=False,
                           return_tensors="pt")["input_ids"]


def resid(model: HookedTransformer, tokens: torch.Tensor, **steering: Any) -> torch.Tensor:
    """The activation at HOOK as the layers downstream see it, steered by `steering` if given."""
    with torch.no_grad():
        if not steering:
            return model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
        with steer(model, gate=FromPosition(START), **steering):
            return model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]


def test_fake_second_device_fails_like_two_devices_and_the_helper_moves_both_ways() -> None:
    sae = make_sae(16)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    want_f, want_x = sae.encode(x), sae.decode(sae.encode(x))
    with torch.no_grad(), FakeSecondDevice():
        put_on_fake_device(sae)
        assert sae_placement(sae) == (FAKE_DEVICE, torch.float32)
        with pytest.raises(RuntimeError, match="same device"):
            sae.encode(x)  # what the callers did before: a device mismatch
        feats = encode_on_sae(sae, x)
        assert type(feats) is torch.Tensor and feats.device == x.device  # back on the layer's device
        torch.testing.assert_close(feats, want_f, rtol=0, atol=0)
        torch.testing.assert_close(decode_on_sae(sae, feats, like=x), want_x, rtol=0, atol=0)
        assert on_sae(sae, lambda t: t.sum(-1), x.double()).dtype == torch.float64  # the caller's dtype
        assert encode_on_sae(sae, x, out_dtype=torch.float16).dtype == torch.float16


def test_every_sae_caller_works_with_the_sae_on_another_device(
    models: dict[torch.dtype, HookedTransformer], tokens: torch.Tensor, tmp_path: Path
) -> None:
    """Steer (add, clamp, ablate), encode_features, the sweep read-out and harvest: the same numbers with the SAE
    on a second device as on the layer's (float64 SAE, float32 model: device and dtype both differ)."""
    model = models[torch.float32]
    here = make_sae(model.cfg.d_model, torch.float64)
    there = copy.deepcopy(here)
    clean = resid(model, tokens)
    fired = int((here.encode(clean)[0, START:] > 0).sum(0).argmax())
    modes = {"add": 3.0, "clamp": 5.0, "ablate": 0.0}
    want = {mode: resid(model, tokens, sae=here, feature=fired, strength=s, mode=mode) for mode, s in modes.items()}
    want_feat = encode_features(here, clean, [fired, 2])
    sweep_kwargs = dict(sae=here, feature=fired, gate=FromPosition(START), max_new_tokens=3, chat=False)
    want_sweep = sweep_strengths(model, tokens, [0.0, 6.0], **sweep_kwargs).table
    prompts = ["Okay, so the user asked about 12 and 30.", "Wait, let me check again."]
    harvest(model, here, prompts, tmp_path / "here", top_k=4, progress=False)

    with FakeSecondDevice():
        put_on_fake_device(there)
        assert there.W_dec.device == FAKE_DEVICE
        for mode, strength in modes.items():
            got = resid(model, tokens, sae=there, feature=fired, strength=strength, mode=mode)
            assert type(got) is torch.Tensor and got.dtype == torch.float32, mode
            torch.testing.assert_close(got, want[mode], rtol=0, atol=0)
        feat = encode_features(there, clean, [fired, 2])
        assert type(feat) is torch.Tensor and feat.dtype == torch.float64  # read-outs keep the SAE's precision
        torch.testing.assert_close(feat, want_feat, rtol=0, atol=0)
        got_sweep = sweep_strengths(model, tokens, [0.0, 6.0], **{**sweep_kwargs, "sae": there}).table
        harvest(model, there, prompts, tmp_path / "there", top_k=4, progress=False)
    pd.testing.assert_frame_equal(got_sweep, want_sweep)
    assert not (want["clamp"] == clean).all()
    acts = {w: pd.read_parquet(next((tmp_path / w).glob("shard-*")) / "activations.parquet") for w in ("here", "there")}
    pd.testing.assert_frame_equal(acts["there"], acts["here"])
    assert len(acts["here"]) > 0


@pytest.mark.parametrize(
    ("model_dtype", "sae_dtype"),
    [(torch.float32, torch.float64), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
)
def test_add_clamp_ablate_and_read_out_with_the_sae_in_another_dtype(
    models: dict[torch.dtype, HookedTransformer], tokens: torch.Tensor, model_dtype: torch.dtype,
    sae_dtype: torch.dtype,
) -> None:
    """Against the by-hand formulas: the SAE maths in the SAE's dtype, the edit added in the layer's dtype."""
    model = models[model_dtype]
    sae = make_sae(model.cfg.d_model, sae_dtype)
    clean = resid(model, tokens)
    feats = by_hand_encode(sae, clean)
    fired = int((feats[0, START:] > 0).sum(0).argmax())
    row = sae.W_dec[fired].detach()
    with torch.no_grad():
        for mode, value in (("clamp", 5.0), ("ablate", 0.0)):
            got = resid(model, tokens, sae=sae, feature=fired, strength=value, mode=mode)
            assert got.dtype == model_dtype
            # x' = x + (value - f_i(x)) W_dec[i], computed in the SAE's dtype and added in the layer's.
            delta = ((value - feats[..., fired]).unsqueeze(-1) * row).to(model_dtype)
            expected = torch.cat([clean[:, :START], clean[:, START:] + delta[:, START:]], dim=1)
            tol = 2e-2 if torch.bfloat16 in (model_dtype, sae_dtype) else 1e-6
            torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
            assert torch.equal(got[:, :START], clean[:, :START])
        got = resid(model, tokens, sae=sae, feature=fired, strength=3.0, mode="add")
        added = torch.tensor(3.0, dtype=model_dtype) * row.float().to(model_dtype)  # the row in the layer's dtype
        torch.testing.assert_close(got[:, START:], clean[:, START:] + added, rtol=0, atol=0)
        read = encode_features(sae, clean, fired)
        assert read.dtype == sae_dtype and read.device == clean.device
        torch.testing.assert_close(read[..., 0], feats[..., fired], rtol=1e-2 if sae_dtype == torch.bfloat16 else 0,
                                   atol=1e-2 if sae_dtype == torch.bfloat16 else 0)
    assert (feats[0, START:, fired] > 0).any()
