"""TransformerLens's weight processing for DeepSeek-V3: the exact RMSNorm folds and unembedding centring that
`from_pretrained` applies, and `load_and_process_state_dict` / `process_weights_` built on them."""

from __future__ import annotations

import torch
import torch.nn as nn

from r1_plugin.models.deepseek_v3.config import DeepseekV3HookedConfig
from r1_plugin.models.deepseek_v3.fp8_weights import fp8_parts

PROCESSING_HELP = (
    "Load DeepSeek-V3/R1 with `HookedTransformer.from_pretrained_no_processing(...)` (or pass "
    "refactor_factored_attn_matrices=False)."
)


def refuse_refactor(refactor_factored_attn_matrices: bool) -> None:
    """refactor_factored_attn_matrices has no meaning for MLA: refuse it, saying how to load instead."""
    if refactor_factored_attn_matrices:
        raise ValueError(
            "refactor_factored_attn_matrices is not defined for MLA (queries and keys come from low-rank latents "
            "with a shared rope key, not per-head W_Q/W_K). " + PROCESSING_HELP
        )


@torch.no_grad()
def fold_layer_norms(model: nn.Module, norm_weights: dict[str, torch.Tensor]) -> None:
    """Fold ln1/ln2/ln_final RMSNorm weights into the matrices that read their output (exact for RMSNorm).

    ln1 -> W_Q_a (or W_Q) and W_KV_a; ln2 -> dense W_gate/W_in, or router, experts' and shared experts' W_gate/W_in;
    ln_final -> W_U. Products are taken in float32 and cast back; experts are folded one at a time. A weight kept
    in FP8 (keep_fp8) takes the same product after each dequantisation, so the fold stays exact there too.
    """
    cfg: DeepseekV3HookedConfig = model.cfg  # type: ignore[assignment]

    def scale_rows(module: nn.Module, attr: str, w: torch.Tensor, dim: int) -> None:
        parts = fp8_parts(module, attr)
        if parts is not None:  # kept FP8: the same product, taken after each dequantisation
            parts[1].fold_input_scale(w)
            return
        weight = getattr(module, attr)
        shape = [1] * weight.ndim
        shape[dim] = -1
        w = w.to(weight.device).view(shape)
        if weight.ndim == 3 and dim == 1:
            for i in range(weight.shape[0]):
                weight[i].copy_((weight[i].float() * w[0]).to(weight.dtype))
        else:
            weight.copy_((weight.float() * w).to(weight.dtype))

    for i, block in enumerate(model.blocks):  # type: ignore[attr-defined]
        ln1, ln2 = norm_weights.pop(f"blocks.{i}.ln1.w"), norm_weights.pop(f"blocks.{i}.ln2.w")
        attn = block.attn
        if cfg.q_lora_rank is not None:
            scale_rows(attn, "W_Q_a", ln1, 0)
        else:
            scale_rows(attn, "W_Q", ln1, 1)
        scale_rows(attn, "W_KV_a", ln1, 0)
        mlp = block.mlp
        if block.is_moe:
            scale_rows(mlp, "W_router", ln2, 0)
            scale_rows(mlp.experts, "W_gate", ln2, 1)
            scale_rows(mlp.experts, "W_in", ln2, 1)
            if mlp.shared_experts is not None:
                scale_rows(mlp.shared_experts, "W_gate", ln2, 0)
                scale_rows(mlp.shared_experts, "W_in", ln2, 0)
        else:
            scale_rows(mlp, "W_gate", ln2, 0)
            scale_rows(mlp, "W_in", ln2, 0)
    w_u = model.unembed.W_U  # type: ignore[attr-defined]
    folded = (w_u.t().float() * norm_weights.pop("ln_final.w").to(w_u.device)[None, :]).to(w_u.dtype)
    model.unembed._parameters["W_U"] = nn.Parameter(folded.t(), requires_grad=w_u.requires_grad)  # type: ignore[attr-defined]


@torch.no_grad()
def center_unembed_weights(model: nn.Module) -> None:
    """Subtract each row's mean over the vocabulary from W_U and b_U (log-probs unchanged, as in TL)."""
    unembed = model.unembed  # type: ignore[attr-defined]
    w_u = unembed.W_U
    if w_u.untyped_storage().data_ptr() == model.embed.W_E.untyped_storage().data_ptr():  # type: ignore[attr-defined]
        # Tied embeddings (W_U is a view of W_E): centre a copy, or the embedding would be centred too.
        centred = w_u - w_u.mean(dim=-1, keepdim=True)
        unembed._parameters["W_U"] = nn.Parameter(centred, requires_grad=w_u.requires_grad)
    else:
        w_u.sub_(w_u.mean(dim=-1, keepdim=True))
    unembed.b_U.sub_(unembed.b_U.mean())


@torch.no_grad()
def load_and_process_into(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    fold_ln: bool = True,
    center_unembed: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> None:
    """HookedTransformer.load_and_process_state_dict (and so `process_weights_`) for DeepSeek-V3.

    TransformerLens's version swaps the norms for RMSNormPre and then folds their weights into W_Q/W_K/W_V and
    W_in, which MLA/MoE do not have, so the norm weights were silently lost. Here the same exact folds as
    `from_pretrained` (fold_layer_norms, center_unembed_weights); center_writing_weights is skipped for RMSNorm
    and fold_value_biases has nothing to fold (no value biases), as in `load_pretrained`.
    """
    from transformer_lens.components import RMSNormPre

    refuse_refactor(refactor_factored_attn_matrices)
    from r1_plugin.models.deepseek_v3.fp8_weights import has_fp8_weights

    if fold_ln and has_fp8_weights(model):
        raise ValueError(
            "process_weights_/load_and_process_state_dict with fold_ln=True on a keep_fp8 model is not supported "
            "(its FP8 weights are stored as in the checkpoint). Load with `HookedTransformer.from_pretrained("
            "..., keep_fp8=True)`, which folds exactly at load, or `from_pretrained_no_processing(..., "
            "keep_fp8=True)`, or pass fold_ln=False."
        )
    cfg: DeepseekV3HookedConfig = model.cfg  # type: ignore[assignment]
    state_dict = dict(state_dict)
    norm_keys = [k for k in state_dict if k.endswith((".ln1.w", ".ln2.w")) or k == "ln_final.w"]
    fold = fold_ln and bool(norm_keys) and cfg.normalization_type in ("RMS", "RMSPre")
    norm_weights = {k: state_dict.pop(k).detach().to(torch.float32).clone() for k in norm_keys} if fold else {}
    if fold and cfg.normalization_type == "RMS":
        cfg.normalization_type = "RMSPre"
        model.ln_final = RMSNormPre(cfg)
        for block in model.blocks:  # type: ignore[attr-defined]
            block.ln1, block.ln2 = RMSNormPre(cfg), RMSNormPre(cfg)
    if "unembed.b_U" not in state_dict and "unembed.b_U" in model.state_dict():
        state_dict["unembed.b_U"] = torch.zeros_like(model.state_dict()["unembed.b_U"])
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit this DeepSeek-V3 model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]} (a state dict whose norms were already folded needs a model built with "
            "normalization_type='RMSPre', or fold_ln=False)."
        )
    if fold:
        fold_layer_norms(model, norm_weights)
    if center_unembed:
        center_unembed_weights(model)
    if fold:
        model.setup()  # type: ignore[operator]  (the norm modules were replaced: rebuild the hook dict)
