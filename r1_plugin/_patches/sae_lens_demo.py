"""SAELens registry entries the demo's asset build asks for (`scripts/make_tiny_r1.py --stage sae`): a tied top-k
SAE class, registered on request only. Not in PATCH_MODULES: `import r1_plugin` never applies it.

What and why: Goodfire's format stores one matrix for encoder and decoder, so the demo's tiny SAE is trained tied,
which needs a training class SAELens's registries know by name (SAELens has no other way to add one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from r1_plugin._patches._marks import all_or_nothing, keep

if TYPE_CHECKING:
    import torch

TIED_TOPK_ARCHITECTURE = "r1_plugin_tied_topk"


def register_tied_topk() -> str:
    """Register with SAELens a top-k SAE whose encoder is the decoder's transpose (Goodfire's tied `W`); idempotent.

    Goodfire's file stores one matrix `W` used as `x @ W` to encode and `f @ W.T` to decode; an untied SAE cannot be
    written in that format without changing what it computes, so the SAE is trained tied: SAELens's own top-k
    training class (aux-k loss, evaluator, W&B logging) with `W_dec.T` in place of `W_enc` in the forward pass.
    Registered through SAELens's `register_sae_training_class` / `register_sae_class`, only when the demo's SAE
    build stage asks (never on import, never under a hub release id); both registries are restored if it fails.
    """
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

    if TIED_TOPK_ARCHITECTURE in SAE_TRAINING_CLASS_REGISTRY:
        return TIED_TOPK_ARCHITECTURE

    @dataclass
    class TiedTopKSAEConfig(TopKSAEConfig):
        """Inference config of the tied top-k SAE (SAELens needs one per training architecture)."""

        @classmethod
        def architecture(cls) -> str:
            """SAELens architecture name."""
            return TIED_TOPK_ARCHITECTURE

    @dataclass
    class TiedTopKTrainingSAEConfig(TopKTrainingSAEConfig):
        """Training config of the tied top-k SAE."""

        @classmethod
        def architecture(cls) -> str:
            """SAELens architecture name."""
            return TIED_TOPK_ARCHITECTURE

    class TiedTopKTrainingSAE(TopKTrainingSAE):
        """Top-k training SAE with the encoder tied to the decoder (its own W_enc is unused)."""

        def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Pre-activations `x @ W_dec.T + b_enc`, then SAELens's top-k."""
            sae_in = self.process_sae_in(x)
            hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_dec.T + self.b_enc)
            feature_acts = self.hook_sae_acts_post(self.activation_fn(hidden_pre))
            return feature_acts, hidden_pre

    with all_or_nothing():
        keep(SAE_CLASS_REGISTRY)
        keep(SAE_TRAINING_CLASS_REGISTRY)
        if TIED_TOPK_ARCHITECTURE not in SAE_CLASS_REGISTRY:
            register_sae_class(TIED_TOPK_ARCHITECTURE, TopKSAE, TiedTopKSAEConfig)
        register_sae_training_class(TIED_TOPK_ARCHITECTURE, TiedTopKTrainingSAE, TiedTopKTrainingSAEConfig)
    return TIED_TOPK_ARCHITECTURE
