"""FP8 weights kept FP8 in memory (`keep_fp8=True`): each weight attribute dequantises on access.

A checkpoint's e4m3 weight stays in its [out, in] checkpoint layout with its `weight_scale_inv`, registered as a
`torch.nn.utils.parametrize` parametrization of the TL attribute (`attn.W_Q_a`, `mlp.W_gate`,
`mlp.experts.W_gate`, ...). Reading the attribute returns `dequantize_stacked(...)` cast to the model dtype and
viewed in TransformerLens orientation: the same `fp8 * scale_inv` product in float32, cast to the same dtype, that
the dequantise-on-load path stores, so the numbers are identical and attention/MLP code reads weights unchanged.
The routed experts' forward does not read the full attribute: it dequantises only the experts that received tokens,
in chunks (`DeepseekV3Experts`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from r1_plugin.models.deepseek_v3.fp8 import check_scale_shape, dequantize_stacked

# How the dequantised [.., out, in] checkpoint matrix becomes the TL attribute (always a view, never a copy);
# "hf": unchanged, for transformers' modules (nn.Linear.weight and the fused experts keep the checkpoint layout).
LAYOUTS = ("t", "heads", "o", "experts", "hf")

class Fp8Weight(nn.Module):
    """Parametrization: e4m3 weight [..., out, in] (checkpoint layout) -> dequantised TL-oriented weight in `dtype`."""

    def __init__(
        self,
        scale_inv: torch.Tensor,
        block_size: tuple[int, int],
        dtype: torch.dtype,
        layout: str,
        heads: int = 0,
        row_block: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown FP8 weight layout {layout!r}; expected one of {LAYOUTS}.")
        self.register_buffer("scale_inv", scale_inv.to(torch.float32))
        self.register_buffer("row_block", row_block)  # original scale-row of each stored row (kv_b_proj halves)
        self.register_buffer("fold_in", None)  # RMSNorm weight folded into the input dim (fold_ln), float32
        self.block_size = (int(block_size[0]), int(block_size[1]))
        self.dtype = dtype
        self.layout = layout
        self.heads = heads

    def dequantize(self, original: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        """The dequantised matrix in checkpoint layout; for stacked experts only those in `experts` (ids)."""
        scale = self.scale_inv
        if experts is not None:
            original, scale = select_rows(original, 0, experts), scale.index_select(0, experts.to(scale.device))
        w = dequantize_stacked(original, scale, self.block_size, self.dtype, self.row_block)
        if self.fold_in is not None:  # the dequantise-on-load fold's exact operations: (w.float() * ln).to(dtype)
            w = (w.float() * self.fold_in.to(w.device)).to(self.dtype)
        return w

    def fold_input_scale(self, ln_weight: torch.Tensor) -> None:
        """Fold an RMSNorm weight into the input dimension (exact: applied after dequantisation, per access)."""
        if self.fold_in is not None:
            raise ValueError("this FP8 weight already has a norm folded in; fold_ln runs once per model.")
        self.fold_in = ln_weight.detach().to(device=self.scale_inv.device, dtype=torch.float32).clone()

    def to_tl(self, w: torch.Tensor) -> torch.Tensor:
        """Checkpoint [.., out, in] -> TransformerLens orientation, as the dequantise-on-load path stores it."""
        return tl_view(w, self.layout, self.heads)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """What reading the attribute returns: the whole weight dequantised (for inspection; forwards use less)."""
        return self.to_tl(self.dequantize(original))

    def extra_repr(self) -> str:
        return f"layout={self.layout}, block_size={self.block_size}, dtype={self.dtype}"


def select_rows(fp8: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """`fp8.index_select(dim, index)` through a uint8 view (not every device's index kernels take float8)."""
    return fp8.view(torch.uint8).index_select(dim, index.to(fp8.device)).view(fp8.dtype)


def tl_view(w: torch.Tensor, layout: str, heads: int = 0) -> torch.Tensor:
    """Checkpoint [.., out, in] -> TL orientation (the loader's `destinations` transforms), always a view."""
    if layout == "t":
        return w.t()
    if layout == "heads":  # [h*n, in] -> [h, in, n]
        return w.view(heads, -1, w.shape[-1]).transpose(1, 2)
    if layout == "o":  # [d_model, h*v] -> [h, v, d_model]
        return w.t().reshape(heads, -1, w.shape[0])
    if layout == "hf":
        return w
    return w.transpose(-1, -2)  # experts: [E, out, in] -> [E, in, out]


def fp8_layout(name: str, cfg: Any) -> tuple[str, int, torch.Tensor | None] | None:
    """(layout, heads, rows of the checkpoint matrix kept) for a TL weight kept FP8; None: dequantise it on load.

    W_K_b and W_V_b are the two row sets of one kv_b_proj matrix ([h * (nope + v), kv_lora_rank]); each keeps its
    rows and remembers their original scale rows, so block boundaries need not align with the split.
    """
    attr = name.rsplit(".", 1)[-1]
    h = cfg.n_heads
    if ".attn." in name:
        if attr in ("W_Q_a", "W_KV_a"):
            return "t", 0, None
        if attr in ("W_Q_b", "W_Q"):
            return "heads", h, None
        if attr == "W_O":
            return "o", h, None
        if attr in ("W_K_b", "W_V_b"):
            nope, v = cfg.qk_nope_head_dim, cfg.v_head_dim
            per_head = torch.arange(h * (nope + v)).view(h, nope + v)
            rows = per_head[:, :nope] if attr == "W_K_b" else per_head[:, nope:]
            return "heads", h, rows.reshape(-1)
        return None
    if ".mlp.experts." in name and attr in ("W_gate", "W_in", "W_out"):
        return "experts", 0, None
    if ".mlp." in name and attr in ("W_gate", "W_in", "W_out"):
        return "t", 0, None
    return None


def keep_fp8_weight(
    module: nn.Module,
    attr: str,
    fp8: torch.Tensor,
    scale_inv: torch.Tensor,
    block_size: tuple[int, int],
    dtype: torch.dtype,
    layout: str,
    heads: int = 0,
    row_block: torch.Tensor | None = None,
    name: str | None = None,
) -> None:
    """Store `fp8` (+ scales) as `module.<attr>`'s parametrization, replacing its (meta) parameter.

    The scale's shape is checked against the weight and block size first (`check_scale_shape`): a scale that
    does not fit would otherwise broadcast into wrong numbers at every forward.
    """
    scale_rows = None if row_block is None or not row_block.numel() else int(row_block.max()) + 1
    check_scale_shape(name or attr, fp8.shape, scale_inv.shape, block_size, scale_rows=scale_rows)
    module._parameters[attr] = nn.Parameter(fp8, requires_grad=False)
    weight = Fp8Weight(scale_inv.to(fp8.device), block_size, dtype, layout, heads,
                       None if row_block is None else row_block.to(fp8.device))
    parametrize.register_parametrization(module, attr, weight, unsafe=True)


def fp8_parts(module: nn.Module, attr: str) -> tuple[torch.Tensor, Fp8Weight] | None:
    """(stored e4m3 tensor, its Fp8Weight) when `module.<attr>` is kept in FP8, else None."""
    if not parametrize.is_parametrized(module, attr):
        return None
    plist = module.parametrizations[attr]  # type: ignore[index]
    if len(plist) != 1 or not isinstance(plist[0], Fp8Weight):
        return None
    return plist.original, plist[0]


def has_fp8_weights(model: nn.Module) -> bool:
    """Whether any weight of `model` is kept in FP8."""
    return any(isinstance(m, Fp8Weight) for m in model.modules())


def resident_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers `module` holds (FP8 originals and scales included, each once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "meta" or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def dequantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` under the plain (dequantise-on-load) names, FP8 weights dequantised to the model dtype.

    `model.state_dict()` of a keep_fp8 model holds `<module>.parametrizations.<attr>.original` (e4m3) and
    `.0.scale_inv`: it round-trips into another keep_fp8 model. This is what a model loaded without keep_fp8
    (or `load_and_process_state_dict`) takes.
    """
    out: dict[str, torch.Tensor] = {}
    marker = ".parametrizations."
    for key, value in model.state_dict().items():
        if marker not in key:
            out[key] = value
            continue
        prefix, _, rest = key.partition(marker)
        attr, _, tail = rest.partition(".")
        if tail == "original":
            module = model.get_submodule(prefix)
            with torch.no_grad():
                out[f"{prefix}.{attr}"] = getattr(module, attr).detach().clone()
    return out


def describe(model: Any) -> str:
    """One line: how many weights are kept in FP8 and the blocks' resident bytes."""
    n = sum(isinstance(m, Fp8Weight) for m in model.modules())
    return f"{n} FP8 weights kept FP8; blocks hold {resident_bytes(model.blocks) / 2**20:.1f} MiB"
