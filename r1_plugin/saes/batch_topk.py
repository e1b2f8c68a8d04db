"""Goodfire's batch top-k encode as a SAELens SAE class (architecture `goodfire_batch_topk`), opt-in.

Goodfire's `BatchTopKTiedSAE.encode` keeps the `k * n_tokens` largest entries of `relu(x @ W + b_enc)` over the
WHOLE input at once (all leading dims flattened), so a token's L0 depends on the other tokens it is encoded with.
SAELens's `topk` keeps k per token (standard inference). The two agree for a single token; for a batch they
differ. This class reproduces Goodfire's encode exactly, including the optional deterministic tie-break
(`linspace(0, tiebreaker_epsilon, d_sae)` added before selection, and kept in the returned values, as Goodfire does).

Opt in with `GoodfireBatchTopKSAE.from_pretrained(release, sae_id)`, `to_batch_topk(sae)`, or
`architecture: goodfire_batch_topk` in a release's `config_overrides`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import nn
from typing_extensions import override

from r1_plugin.errors import SAEMaskError

ARCHITECTURE = "goodfire_batch_topk"


class GoodfireBatchTopK(nn.Module):
    """Keep the k * n_tokens largest ReLU'd pre-activations over the whole input (Goodfire's `_batch_topk`).

    Named apart from SAELens's own `BatchTopK` (a training-time activation with another constructor).
    """

    def __init__(self, k: int, d_sae: int, tiebreak: bool = False, tiebreaker_epsilon: float = 1e-6) -> None:
        super().__init__()
        self.k = k
        self.tiebreak = tiebreak
        # A plain float32 CPU tensor, as in Goodfire's class (not a buffer: `sae.to(dtype)` must not convert it,
        # and SAELens builds SAEs on the meta device).
        self.tiebreaker = torch.linspace(0, tiebreaker_epsilon, d_sae)
        self._tiebreaker_on: dict[torch.device, torch.Tensor] = {}

    def forward(self, hidden_pre: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Batch top-k of relu(hidden_pre); leading dims are the tokens.

        `attention_mask` (the leading dims' shape, nonzero = a real token) leaves padding out: only real tokens
        count towards the `k * n_tokens` budget and compete for it, and masked tokens come out all zero.
        """
        f = torch.relu(hidden_pre)
        if self.tiebreak:
            # Out of place (ReLU saves its output for backward); computed in float32 and stored in f's dtype,
            # the same numbers as Goodfire's in-place `f += tiebreaker`.
            tiebreaker = self._tiebreaker_on.get(f.device)
            if tiebreaker is None:
                tiebreaker = self._tiebreaker_on.setdefault(f.device, self.tiebreaker.to(f.device))
            f = (f + tiebreaker).to(f.dtype)
        if attention_mask is None:
            n_tokens = math.prod(f.shape[:-1])
            candidates = f
        else:
            if attention_mask.shape != f.shape[:-1]:
                raise SAEMaskError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; it must match the activations' "
                    f"token dims {tuple(f.shape[:-1])} (1 for real tokens, 0 for padding)"
                )
            keep = attention_mask.to(device=f.device).bool()
            n_tokens = int(keep.sum())
            # Below every ReLU'd value, so a masked entry is never chosen while real ones remain.
            candidates = torch.where(keep[..., None], f, torch.full_like(f, -1.0))
        flat = candidates.flatten()
        n_keep = min(self.k * n_tokens, n_tokens * f.shape[-1])
        top = torch.topk(flat, n_keep, dim=-1)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(f.shape)


@dataclass
class GoodfireBatchTopKSAEConfig(TopKSAEConfig):
    """TopKSAEConfig plus Goodfire's tie-break switch; `k` is per token (k * n_tokens kept per batch)."""

    tiebreak: bool = False
    tiebreaker_epsilon: float = 1e-6

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class GoodfireBatchTopKSAE(TopKSAE):
    """A TopKSAE whose encode is Goodfire's batch top-k (the whole input of one encode call is the batch)."""

    cfg: GoodfireBatchTopKSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: GoodfireBatchTopKSAEConfig, use_error_term: bool = False) -> None:
        if cfg.rescale_acts_by_decoder_norm:
            raise ValueError("Goodfire's batch top-k selects on raw activations: rescale_acts_by_decoder_norm must be False")
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def get_activation_fn(self) -> GoodfireBatchTopK:  # type: ignore[override]
        return GoodfireBatchTopK(self.cfg.k, self.cfg.d_sae, self.cfg.tiebreak, self.cfg.tiebreaker_epsilon)

    @override
    def encode(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Feature activations of x [..., d_in] by batch top-k over all its tokens, or over the tokens where
        `attention_mask` [...] is nonzero (padding and excluded tokens take no part and come out zero)."""
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre, attention_mask))

    @classmethod
    def from_pretrained_with_cfg_and_sparsity(  # type: ignore[override]
        cls,
        release: str,
        sae_id: str,
        device: str = "cpu",
        dtype: str = "float32",
        force_download: bool = False,
        converter: Any = None,
        fold_W_dec_norm: bool = False,
        tiebreak: bool = False,
    ) -> tuple[GoodfireBatchTopKSAE, dict[str, Any], torch.Tensor | None]:
        """Load any `topk` release through SAELens and switch its encode to Goodfire's batch top-k."""
        from sae_lens import SAE

        sae, cfg_dict, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(
            release, sae_id, device=device, dtype=dtype, force_download=force_download, converter=converter,
            fold_W_dec_norm=fold_W_dec_norm,
        )
        batch_sae = to_batch_topk(sae, tiebreak=tiebreak)
        return batch_sae, {**cfg_dict, "architecture": ARCHITECTURE, "tiebreak": tiebreak}, sparsity

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        release: str,
        sae_id: str,
        device: str = "cpu",
        dtype: str = "float32",
        force_download: bool = False,
        converter: Any = None,
        fold_W_dec_norm: bool = False,
        tiebreak: bool = False,
    ) -> GoodfireBatchTopKSAE:
        """`SAE.from_pretrained` of a `topk` release, with Goodfire's batch top-k encode (opt-in tie-break)."""
        return cls.from_pretrained_with_cfg_and_sparsity(
            release, sae_id, device, dtype, force_download, converter, fold_W_dec_norm, tiebreak
        )[0]


def to_batch_topk(sae: TopKSAE, tiebreak: bool = False, tiebreaker_epsilon: float = 1e-6) -> GoodfireBatchTopKSAE:
    """A GoodfireBatchTopKSAE sharing `sae`'s parameters (no copy): same weights, Goodfire's batch encode."""
    if not isinstance(sae, TopKSAE):
        raise TypeError(f"batch top-k needs a top-k SAE (architecture 'topk'), got {type(sae).__name__}")
    values = {f.name: getattr(sae.cfg, f.name) for f in fields(TopKSAEConfig) if f.name != "metadata"}
    device = values["device"]
    cfg = GoodfireBatchTopKSAEConfig(**{**values, "device": "meta"}, tiebreak=tiebreak,
                                     tiebreaker_epsilon=tiebreaker_epsilon)
    cfg.metadata = type(sae.cfg.metadata)(**sae.cfg.metadata.to_dict())
    new = GoodfireBatchTopKSAE(cfg)
    new.load_state_dict(sae.state_dict(), assign=True)
    new.cfg.device = device
    new.device = torch.device(device)
    return new


def __getattr__(name: str) -> Any:
    """`BatchTopK`, this module's old name for `GoodfireBatchTopK`, still imports for one release, with a warning."""
    if name == "BatchTopK":
        warnings.warn(
            "r1_plugin.saes.batch_topk.BatchTopK is deprecated: use GoodfireBatchTopK (SAELens has its own, "
            "different BatchTopK)",
            DeprecationWarning,
            stacklevel=2,
        )
        return GoodfireBatchTopK
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
