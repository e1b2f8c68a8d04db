"""The distills load with their real 131072-token context, and n_ctx costs no memory at load (TL 3.9 builds its
rotary tables and causal mask lazily)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LLAMA = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
REAL_CONTEXT = 131072


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (persistent or not) the model holds."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


@pytest.mark.parametrize("repo_id", [QWEN, LLAMA])
def test_real_context_length_costs_no_memory_at_load(hf_cache: object, repo_id: str) -> None:
    hf_model, _ = write_tiny_distill(repo_id, seed=3, max_position_embeddings=REAL_CONTEXT)
    full = HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu")
    short = HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu", n_ctx=4096)
    assert full.cfg.n_ctx == REAL_CONTEXT and short.cfg.n_ctx == 4096
    # 32x the context, the same bytes: each layer starts with a 2048-row rotary table and an empty mask.
    assert held_bytes(full) == held_bytes(short)
    assert full.blocks[0].attn.rotary_cos.shape[0] == 2048 and full.blocks[0].attn.mask.numel() == 0
    # Past TL's initial 2048-row rotary table, which it extends on demand: still HF's logits.
    tokens = torch.randint(0, 380, (1, 2100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = full(tokens)[0, -8:], hf_model(tokens).logits[0, -8:]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_r1_context_length_costs_no_memory_at_load(hf_cache: object) -> None:
    """DeepSeek-V3/R1 keeps its 163840-token context; its rotary computes cos/sin per call (no tables)."""
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    name = "deepseek-ai/DeepSeek-R1"
    write_tiny_checkpoint(name, tiny_config(max_position_embeddings=163840), seed=1)
    full = HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    short = HookedTransformer.from_pretrained_no_processing(name, device="cpu", n_ctx=256)
    assert full.cfg.n_ctx == 163840 and short.cfg.n_ctx == 256
    assert held_bytes(full) == held_bytes(short)
