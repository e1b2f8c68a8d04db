"""Tiny models for the TransformerBridge tests, each booted as a TransformerBridge AND loaded as a HookedTransformer
from the same float32 weights: the R1 architecture (DeepseekV3, MLA + MoE) and both distill families.

SAELens-free on purpose (so `make compat-tl4` can run the tests that use it under TransformerLens 4): test-only,
imported by name like the other test helpers.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from r1_plugin.chat import format_r1_prompt

FAMILIES = ("r1", "qwen", "llama")
REPOS = {
    "qwen": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "llama": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
}


def folder_of(family: str) -> str:
    """A folder (or cached repo id) holding the family's tiny float32 checkpoint with its tokenizer."""
    if family == "r1":
        from r1_plugin.testing.deepseek_checkpoints import write_tiny_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="tiny_r1_bridge_"))
        write_tiny_checkpoint(folder=folder)
        return str(folder)
    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    _, snapshot = write_tiny_distill(REPOS[family], seed=0)
    return str(snapshot)


def hooked_available() -> bool:
    """Whether this TransformerLens has HookedTransformer (3.x; TransformerLens 4 removed it)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except Exception:
        return False
    return True


def load_pair(family: str) -> tuple[Any, Any]:
    """(HookedTransformer, TransformerBridge) of the family's tiny checkpoint, float32 on CPU; the first is None
    under TransformerLens 4 (no HookedTransformer there: the bridge is then checked against the oracles alone)."""
    from r1_plugin.drive import load_model

    source = folder_of(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = load_model(source, "hooked", device="cpu", dtype=torch.float32) if hooked_available() else None
        bridge = load_model(source, "bridge", device="cpu", dtype=torch.float32)
    return hooked, bridge


def left_padded(model: Any, texts: list[str]) -> torch.Tensor:
    """`[batch, seq]` left-padded ids of already-formatted texts (no extra BOS)."""
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    return torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])


def chat_batch(model: Any) -> torch.Tensor:
    """Three R1 chat prompts of different lengths, left-padded; row 1 has begun its response prefix."""
    texts = [
        format_r1_prompt(model, "Hi"),
        format_r1_prompt(model, "What is two plus two, really?") + "Okay, so",
        format_r1_prompt(model, "Hello there friend"),
    ]
    return left_padded(model, texts)
