"""TransformerBridge: R1's FP8 checkpoints in the requested dtype (`keep_fp8=`) and the corrected R1 adapter.

1. `TransformerBridge.boot_transformers` gains one keyword, `keep_fp8` (what and why: transformers loads an
   R1-format FP8 folder on a machine without FP8 kernels as bf16, ignoring the requested float32, and on FP8 GPUs
   computes with FP8 matmuls; both differ from the exact dequantisation). For a DeepSeek-V3 checkpoint (FP8 or not:
   one reader, so a damaged shard or an impossible config.json is named the same way on both model kinds), the
   wrapper builds transformers' DeepseekV3ForCausalLM itself
   (`r1_plugin.models.r1_bridge.loading`: FP8 kept e4m3 with keep_fp8=True, else dequantised once, in
   `dtype`, scale shapes checked) and passes it to the stock method as `hf_model=`. `device_map` / `n_devices` /
   `max_memory` keep their meaning (resolved by TransformerLens's own `resolve_device_map`, dispatched with
   accelerate). Everything else, and every other model, goes to the stock method unchanged (*args/**kwargs
   forwarded); `keep_fp8=True` on a model that is not DeepSeek-V3 is an error. SAELens's
   `SAETransformerBridge.boot_transformers` calls this method, so it takes `keep_fp8` too.
2. `ArchitectureAdapterFactory.register_adapter("DeepseekV3ForCausalLM", R1BridgeAdapter)`: TransformerLens's
   public registry for adapters (a registry write is process-wide state, hence here). It applies when
   transformer_lens is imported after `import r1_plugin` (or at `import r1_plugin` if it already was); a process
   that never imports r1_plugin keeps TransformerLens's own adapter. `stock_adapter()` gives the original back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

ARCHITECTURE = "DeepseekV3ForCausalLM"
_ADAPTER_STATE: dict[str, Any] = {}  # "stock": the adapter class TransformerLens had before registration


def r1_checkpoint_config(model_name: Any) -> dict[str, Any] | None:
    """config.json of a DeepSeek-V3 checkpoint (folder or hub id r1_plugin knows), FP8 or not, else None."""
    from r1_plugin.models.r1_bridge.loading import r1_checkpoint

    try:
        found = r1_checkpoint(model_name)
    except (FileNotFoundError, OSError):
        return None  # not readable here: the stock method reports it
    return None if found is None else found[1]


def _wrap_boot(original: Callable[..., Any], takes_cls: bool) -> Callable[..., Any]:
    """The wrapper; `takes_cls` when the stock method is a classmethod (TL 3.9 sets a staticmethod of `boot`)."""

    @functools.wraps(original)
    def boot_transformers(*args: Any, keep_fp8: bool | None = None, **kwargs: Any) -> Any:
        from r1_plugin._patches._marks import bind

        call = bind(original, *args, **kwargs)  # a bad call (unknown keyword...) fails here as the stock one would
        lead = args[:1] if takes_cls else ()
        model_name = call["model_name"]
        if keep_fp8 is not None and call["hf_model"] is not None:
            raise ValueError("keep_fp8 applies when boot_transformers loads the checkpoint; with hf_model=... the model "
                             "you pass is used as it is. Drop one of them.")
        if not (call["hf_model"] is None and call["load_weights"] and r1_checkpoint_config(model_name) is not None):
            if keep_fp8:
                from r1_plugin.models.r1_bridge.loading import r1_checkpoint

                if r1_checkpoint(model_name) is None:
                    raise ValueError(
                        f"keep_fp8=True applies to DeepSeek-V3/R1 FP8 checkpoints; {model_name!r} is not one. "
                        "Drop keep_fp8 (R1's distills are not FP8)."
                    )
            return original(*args, **kwargs)  # not DeepSeek-V3: the stock path loads it
        return _boot_fp8(original, lead, call, bool(keep_fp8))

    return boot_transformers


def _boot_fp8(original: Callable[..., Any], lead: tuple[Any, ...], call: dict[str, Any], keep_fp8: bool) -> Any:
    """Build the FP8 R1 model in the requested dtype and hand it to the stock boot as hf_model."""
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    from r1_plugin.models.r1_bridge.loading import build_hf_model

    model_name = call["model_name"]
    if call.get("checkpoint_index") is not None or call.get("checkpoint_value") is not None:
        raise ValueError(f"{model_name} has no training checkpoints; drop checkpoint_index/checkpoint_value.")
    if call.get("model_class") is not None or call.get("trust_remote_code"):
        raise ValueError("model_class / trust_remote_code do not apply to r1_plugin's FP8 DeepSeek-V3 loading "
                         "(it builds transformers' DeepseekV3ForCausalLM); drop them.")
    device_map, max_memory = resolve_device_map(call["n_devices"], call["device_map"], call["device"],
                                                call["max_memory"])
    device = call["device"]
    if device_map is None and device is None:
        from transformer_lens.utilities import get_device

        device = get_device()
    model = build_hf_model(model_name, dtype=call["dtype"], keep_fp8=keep_fp8, device=device, device_map=device_map,
                           max_memory=max_memory, hf_config_overrides=call["hf_config_overrides"],
                           revision=call["revision"])
    rest = {k: v for k, v in call.items()
            if k not in ("cls", "device_map", "n_devices", "max_memory", "hf_model", "device")}
    return original(*lead, hf_model=model, device=device if device_map is None else None, **rest)


def stock_adapter() -> type | None:
    """The DeepSeek-V3 adapter class TransformerLens had before r1_plugin registered its own (None: not yet)."""
    return _ADAPTER_STATE.get("stock")


def apply() -> None:
    """Wrap TransformerBridge.boot_transformers and register R1BridgeAdapter (idempotent)."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge import TransformerBridge

    from r1_plugin._patches._marks import is_patched, keep, mark, replace, require
    from r1_plugin.errors import PatchTargetError

    require(ArchitectureAdapterFactory, "register_adapter", "tl_bridge")
    require(ArchitectureAdapterFactory, "_adapters", "tl_bridge")
    descriptor = require(TransformerBridge, "boot_transformers", "tl_bridge")
    from r1_plugin.models.r1_bridge.adapter import R1BridgeAdapter

    kind = type(descriptor)
    if kind not in (staticmethod, classmethod):
        raise PatchTargetError(f"r1_plugin's patch tl_bridge expects TransformerBridge.boot_transformers to be a "
                               f"staticmethod or classmethod, found {kind.__name__}; report this with the versions.")
    original = descriptor.__func__
    if not is_patched(original):
        wrapper = mark(_wrap_boot(original, takes_cls=kind is classmethod), original)
        replace(TransformerBridge, "boot_transformers", kind(wrapper))
    current = ArchitectureAdapterFactory._adapters.get(ARCHITECTURE)
    if current is not R1BridgeAdapter:
        _ADAPTER_STATE.setdefault("stock", current)
        keep(ArchitectureAdapterFactory._adapters)  # restored if this patch module fails after this point
        ArchitectureAdapterFactory.register_adapter(ARCHITECTURE, R1BridgeAdapter)
