"""Goodfire batch top-k: backward works with the tie-break on, and padding takes no part in the k x n budget."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from r1_plugin.errors import R1PluginError, SAEMaskError
from r1_plugin.saes import GoodfireBatchTopKSAE, to_batch_topk

D_IN, D_SAE, K = 16, 64, 4


def batch_sae(tiebreak: bool) -> GoodfireBatchTopKSAE:
    cfg = TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, apply_b_dec_to_input=False,
                        metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))
    sae = TopKSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
    return to_batch_topk(sae, tiebreak=tiebreak)


def oracle(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, tiebreak: bool) -> torch.Tensor:
    """Batch top-k over the real tokens only, written out: gather them, sort everything, keep k * n_real."""
    out = torch.zeros(*x.shape[:-1], W.shape[1])
    real = [tuple(idx) for idx in mask.nonzero().tolist()]
    values = []
    for idx in real:
        f = torch.relu(x[idx] @ W + b)
        if tiebreak:
            f = f + torch.linspace(0, 1e-6, W.shape[1])
        values += [(float(v), idx, j) for j, v in enumerate(f)]
    values.sort(key=lambda t: -t[0])
    for v, idx, j in values[: K * len(real)]:
        out[idx][j] = v
    return out


@pytest.mark.parametrize("tiebreak", [False, True])
def test_padding_takes_no_part_in_the_budget(tiebreak: bool) -> None:
    sae = batch_sae(tiebreak)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(0))
    x[1, 3:] *= 20.0  # loud padding would take the real tokens' latents if it competed
    x[2, 1:] *= 20.0
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    with torch.no_grad():
        acts = sae.encode(x, attention_mask=mask)
        unmasked = sae.encode(x)
    expected = oracle(x, sae.W_enc.detach(), sae.b_enc.detach(), mask, tiebreak)
    torch.testing.assert_close(acts, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(acts != 0, expected != 0)
    assert int((acts != 0).sum()) == K * int(mask.sum())
    assert not acts[mask == 0].any()
    assert not torch.equal(acts[mask == 1], unmasked[mask == 1])  # without the mask, padding steals latents
    # A mask of all ones is the plain encode.
    assert torch.equal(sae.encode(x, attention_mask=torch.ones(3, 5)), unmasked)


def test_bad_mask_shape_is_a_clear_error() -> None:
    sae = batch_sae(False)
    with pytest.raises(SAEMaskError, match="token dims") as info:
        sae.encode(torch.randn(2, 5, D_IN), attention_mask=torch.ones(2, 4))
    assert isinstance(info.value, R1PluginError)


@pytest.mark.parametrize("tiebreak", [False, True])
def test_backward_through_batch_topk(tiebreak: bool) -> None:
    """The tie-break used to add in place to ReLU's saved output, so backward raised."""
    sae = batch_sae(tiebreak)
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(1), requires_grad=True)
    acts = sae.encode(x)
    (acts * torch.arange(D_SAE)).sum().backward()
    # Reference gradient: the same selection, taken as a fixed mask over relu(x W + b) (+ tie-break).
    x_ref = x.detach().clone().requires_grad_(True)
    f = torch.relu(x_ref @ sae.W_enc.detach() + sae.b_enc.detach())
    if tiebreak:
        f = f + torch.linspace(0, 1e-6, D_SAE)
    ((f * (acts.detach() != 0)) * torch.arange(D_SAE)).sum().backward()
    assert x.grad is not None and sae.W_enc.grad is not None
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_activation_class_is_named_apart_from_saelens_batch_topk() -> None:
    """Our encode activation is `GoodfireBatchTopK` (SAELens's `BatchTopK` is another class with another
    constructor); the old name still imports for one release, with a DeprecationWarning."""
    from sae_lens.saes.batchtopk_sae import BatchTopK as SAELensBatchTopK

    import r1_plugin.saes.batch_topk as module

    sae = batch_sae(tiebreak=False)
    assert type(sae.activation_fn) is module.GoodfireBatchTopK
    assert module.GoodfireBatchTopK is not SAELensBatchTopK
    with pytest.warns(DeprecationWarning, match="GoodfireBatchTopK"):
        from r1_plugin.saes.batch_topk import BatchTopK
    assert BatchTopK is module.GoodfireBatchTopK
    x = torch.randn(3, D_SAE, generator=torch.Generator().manual_seed(1))
    kept = BatchTopK(K, D_SAE)(x)
    assert int((kept != 0).sum()) == K * 3 and torch.equal(kept, module.GoodfireBatchTopK(K, D_SAE)(x))
    with pytest.raises(AttributeError, match="no attribute 'BatchTopk'"):
        module.BatchTopk  # noqa: B018
