"""TransformerBridge adapter for DeepSeek-V3/R1 (DeepseekV3ForCausalLM): TransformerLens 3.9's adapter with the
three defects measured against transformers fixed. Registered by `r1_plugin._patches.tl_bridge` through
`ArchitectureAdapterFactory.register_adapter` (never by replacing TransformerLens code).

1. Causality (TransformerLens < 4.3 only; 4.3 fixed it): the bridge re-implements MLA attention and adds transformers' mask only when one is passed. A model
   whose attention is sdpa (transformers' default, e.g. an `hf_model=` loaded by the user) gets no mask for an
   unpadded batch, since sdpa's kernel would apply `is_causal`; every position then attended to the future (logits
   off by 3.3 on a tiny model). `CausalMLAAttentionBridge` builds the causal mask (offset by the KV cache) when
   none or a boolean one comes in.
2. (still in 4.3) `attn.hook_z` (o_proj's input, [batch, pos, n_heads, v_head_dim] in HookedTransformer) was split by the config's
   d_head, which is qk_rope_head_dim for DeepSeek-V3: [.., 6, 8] instead of [.., 4, 12] on the tiny model.
3. (still in 4.3) Router hooks: `mlp.gate.hook_out` gives only the pre-sigmoid router logits. `DeepseekRouterBridge` adds
   `mlp.gate.hook_expert_indices` and `mlp.gate.hook_topk_weights` ([batch*pos, k]: the chosen experts and their
   final weights, normalised and scaled), aliased as `mlp.hook_expert_indices` / `mlp.hook_topk_weights`, the names
   and shapes of the HookedTransformer R1's hooks. Editing them changes what the experts receive.
4. (still in 4.3) KV cache, found here with transformers 5.25: transformers now passes the cache to attention as `cache`, not
   `past_key_values`, so TransformerLens's MLA forward never saw it: each decode step attended to itself alone and
   cached generation diverged from uncached after the prompt. The cache is handed over under the old name; the
   bridge then caches per-head K and V (its own attention), not transformers' latent.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components import MLAAttentionBridge, MoEBridge
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.supported_architectures.deepseek_v3 import DeepSeekV3ArchitectureAdapter

ROUTER_HOOKS = ("hook_expert_indices", "hook_topk_weights")


def stock_mla_is_causal() -> bool:
    """Whether this TransformerLens's MLA bridge builds the causal mask itself when none comes in (4.3 and later;
    measured: 4.3.0 gives transformers' logits with an sdpa hf_model, 3.9 does not)."""
    from importlib.metadata import version

    from packaging.version import Version

    return Version(Version(version("transformer-lens")).base_version) >= Version("4.3")


def causal_mask(attention_mask: torch.Tensor | None, q_len: int, past: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """Additive [.., q_len, past + q_len] mask: causal (offset by `past` cached positions), plus a given boolean
    4-D mask's exclusions (True = attend, as transformers' sdpa masks are)."""
    kv_len = past + q_len
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(diagonal=past)
    if attention_mask is not None:
        allowed = allowed & attention_mask[..., -q_len:, :kv_len].to(device)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype, device=device))[
        (None,) * (4 - allowed.ndim)
    ]


class CausalMLAAttentionBridge(MLAAttentionBridge):
    """MLA attention that is causal whatever attention implementation the wrapped model was loaded with, sees
    transformers' KV cache, and whose hook_z is split by v_head_dim."""

    # Only where TransformerLens does not do it already (a float mask is authoritative there too, but not needed).
    synthesise_causal_mask = not stock_mla_is_causal()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Pass a causal additive mask when transformers passed none (sdpa fast path) or a boolean one, and the
        KV cache under the name TransformerLens's MLA forward reads."""
        if "cache" in kwargs and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = kwargs.pop("cache")  # transformers >= 5.25 passes the cache as `cache`
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if self.synthesise_causal_mask and isinstance(hidden, torch.Tensor) and (mask is None or mask.dtype == torch.bool):
            cache = kwargs.get("past_key_values")
            layer = getattr(self.original_component, "layer_idx", 0)
            past = int(cache.get_seq_length(layer)) if cache is not None else 0
            kwargs["attention_mask"] = causal_mask(mask, hidden.shape[1], past, hidden.dtype, hidden.device)
        return super().forward(*args, **kwargs)

    def _setup_qkv_hook_reshaping(self) -> None:
        """TransformerLens's reshaping, then hook_z (o_proj's input) split into n_heads x v_head_dim."""
        super()._setup_qkv_hook_reshaping()
        hf_attn = self._modules.get("_original_component")
        o = self._modules.get("o")
        v_head_dim = getattr(hf_attn, "v_head_dim", None)
        conversion = getattr(getattr(o, "hook_in", None), "hook_conversion", None)
        if hf_attn is None or o is None or not v_head_dim or conversion is None:
            return
        n_heads = int(self.config.n_heads)
        o.hook_in.hook_conversion = type(conversion)(n_heads, int(v_head_dim))


class DeepseekRouterBridge(GeneralizedComponent):
    """DeepseekV3TopkRouter with hooks on its outputs: hook_out (router logits, float32), hook_expert_indices and
    hook_topk_weights ([batch*pos, k]), the two that decide the routed experts' inputs."""

    def __init__(self, name: str, config: Any = None, **kwargs: Any) -> None:
        super().__init__(name, config, **kwargs)
        self.hook_expert_indices = HookPoint()
        self.hook_topk_weights = HookPoint()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The router's (logits, top-k weights, top-k indices) with each passed through its hook."""
        out = super().forward(*args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise TypeError(
                f"{self.name}: DeepseekV3TopkRouter returned {type(out).__name__}, not (router_logits, topk_weights, "
                "topk_indices); this transformers version changed the router, so r1_plugin's bridge adapter does "
                "not fit it (run `r1-plugin doctor`)."
            )
        logits, weights, indices = out
        return logits, self.hook_topk_weights(weights), self.hook_expert_indices(indices)


class RoutedMoEBridge(MoEBridge):
    """MoEBridge whose sparse layers also answer to the HookedTransformer R1's router hook names."""

    hook_aliases = {**MoEBridge.hook_aliases, **{name: f"gate.{name}" for name in ROUTER_HOOKS}}


class R1BridgeAdapter(DeepSeekV3ArchitectureAdapter):
    """DeepSeek-V3/R1 adapter: TransformerLens's mapping with the causal MLA attention, hook_z by v_head_dim and
    the router's top-k hooks."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        blocks = self.component_mapping["blocks"]
        attn, mlp = blocks.submodules["attn"], blocks.submodules["mlp"]
        blocks.submodules["attn"] = CausalMLAAttentionBridge(name=attn.name, config=self.cfg,
                                                              submodules=dict(attn.submodules))
        mlp_submodules = dict(mlp.submodules)
        mlp_submodules["gate"] = DeepseekRouterBridge(name="gate", optional=True)
        blocks.submodules["mlp"] = RoutedMoEBridge(name=mlp.name, config=self.cfg, submodules=mlp_submodules,
                                                   sparse_required=("gate",))
