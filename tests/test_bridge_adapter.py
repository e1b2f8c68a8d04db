"""r1_plugin's DeepSeek-V3 bridge adapter against transformers' DeepseekV3ForCausalLM on the same weights: each
defect of TransformerLens 3.9's adapter is reproduced with the stock adapter first, then shown fixed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import r1_plugin  # noqa: F401  (registers the adapter when transformer_lens is imported)
from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

pytestmark = pytest.mark.bridge
ARCH = "DeepseekV3ForCausalLM"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict, object]:
    folder = tmp_path_factory.mktemp("bridge_adapter") / "ckpt"
    config = tiny_config(num_hidden_layers=3)
    written = write_tiny_checkpoint(config=config, seed=1, storage="float32", folder=folder)
    return str(folder), config, hf_reference_model(config, written.tensors)


@contextmanager
def adapter(cls: type) -> Iterator[None]:
    """Boot with `cls` as the DeepSeek-V3 adapter inside the block (the registry is restored after)."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    before = ArchitectureAdapterFactory._adapters[ARCH]
    ArchitectureAdapterFactory.register_adapter(ARCH, cls)
    try:
        yield
    finally:
        ArchitectureAdapterFactory.register_adapter(ARCH, before)


def stock() -> type:
    from r1_plugin._patches.tl_bridge import stock_adapter

    cls = stock_adapter()
    assert cls is not None and cls.__module__.startswith("transformer_lens.")
    return cls


def boot(path: str, **kwargs: object) -> object:
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32, **kwargs)


def tokens(config: dict, shape: tuple[int, int] = (2, 10)) -> torch.Tensor:
    return torch.randint(2, config["vocab_size"], shape, generator=torch.Generator().manual_seed(7))


def test_adapter_is_registered_through_the_factory() -> None:
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    from r1_plugin.models.r1_bridge.adapter import R1BridgeAdapter

    assert ArchitectureAdapterFactory._adapters[ARCH] is R1BridgeAdapter
    assert issubclass(R1BridgeAdapter, stock())


def test_sdpa_hf_model_is_causal(ckpt: tuple[str, dict, object]) -> None:
    from transformers import DeepseekV3ForCausalLM

    from r1_plugin.models.r1_bridge.adapter import stock_mla_is_causal

    path, config, reference = ckpt
    toks = tokens(config)
    with torch.no_grad():
        expected = reference(toks).logits  # type: ignore[operator]
        with adapter(stock()):
            hf = DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32)
            assert hf.config._attn_implementation == "sdpa"
            broken = boot(path, hf_model=hf)(toks)  # type: ignore[operator]
        if stock_mla_is_causal():  # TransformerLens 4.3 fixed it: nothing of ours runs for it there
            assert (broken - expected).abs().max() < 1e-4
        else:
            assert (broken - expected).abs().max() > 0.5  # the defect: attention sees the future
        hf = DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32)
        bridge = boot(path, hf_model=hf)
        fixed = bridge(toks)  # type: ignore[operator]
        padded = torch.cat([torch.zeros(2, 3, dtype=toks.dtype), toks], dim=1)
        mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones_like(toks)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        left_padded = bridge.original_model(  # type: ignore[attr-defined]
            padded, attention_mask=mask, position_ids=positions).logits
    assert (fixed - expected).abs().max() < 1e-4
    assert (left_padded[:, 3:] - expected).abs().max() < 1e-4  # sdpa's boolean padding mask, made additive


def test_hook_z_is_split_by_v_head_dim(ckpt: tuple[str, dict, object]) -> None:
    path, config, reference = ckpt
    toks = tokens(config)
    seen: dict[int, torch.Tensor] = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
               for i, layer in enumerate(reference.model.layers)]  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            reference(toks)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    h, v = config["num_attention_heads"], config["v_head_dim"]
    with adapter(stock()):
        _, stock_cache = boot(path).run_with_cache(toks)  # type: ignore[attr-defined]
    assert stock_cache["blocks.0.attn.hook_z"].shape[-1] == config["qk_rope_head_dim"]  # the defect
    _, cache = boot(path).run_with_cache(toks)  # type: ignore[attr-defined]
    for i in range(config["num_hidden_layers"]):
        z = cache[f"blocks.{i}.attn.hook_z"]
        assert z.shape == (*toks.shape, h, v)
        assert (z.reshape(*toks.shape, h * v) - seen[i]).abs().max() < 1e-5


def router_outputs(reference: object, toks: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Layer -> (top-k weights, top-k indices) of transformers' own router."""
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(reference.model.layers):  # type: ignore[attr-defined]
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp.gate, "e_score_correction_bias"):
            handles.append(layer.mlp.gate.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, (o[1], o[2]))))
    try:
        with torch.no_grad():
            reference(toks)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return out


def by_expert(indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each token's k choices by expert id (transformers' top-k is unsorted; HookedTransformer's is sorted)."""
    order = indices.argsort(dim=-1)
    return indices.gather(-1, order), weights.gather(-1, order)


def hooked_router_hooks(path: str, toks: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The HookedTransformer R1's router hooks on the same weights (None under TransformerLens 4: no HookedTransformer)."""
    import importlib.util

    if importlib.util.find_spec("transformer_lens.HookedTransformer") is None:
        return None
    from transformer_lens import HookedTransformer

    hooked = HookedTransformer.from_pretrained_no_processing(path, device="cpu", dtype=torch.float32, progress=False)
    _, cache = hooked.run_with_cache(toks, names_filter=lambda name: "expert_indices" in name or "topk" in name)
    return dict(cache)


def test_router_hooks_match_transformers_and_hooked_transformer(ckpt: tuple[str, dict, object]) -> None:
    path, config, reference = ckpt
    toks = tokens(config)
    with adapter(stock()):
        _, stock_cache = boot(path).run_with_cache(toks)  # type: ignore[attr-defined]
    assert not [k for k in stock_cache if "expert_indices" in k or "topk" in k]  # the defect: logits only
    _, cache = boot(path).run_with_cache(toks)  # type: ignore[attr-defined]
    hooked_cache = hooked_router_hooks(path, toks)
    expected = router_outputs(reference, toks)
    assert sorted(expected) == list(range(config["first_k_dense_replace"], config["num_hidden_layers"]))
    for i, (weights, indices) in expected.items():
        k = config["num_experts_per_tok"]
        for name in (f"blocks.{i}.mlp.hook_expert_indices", f"blocks.{i}.mlp.gate.hook_expert_indices"):
            assert cache[name].shape == (toks.numel(), k)
        assert torch.equal(cache[f"blocks.{i}.mlp.hook_expert_indices"], indices)
        assert torch.equal(cache[f"blocks.{i}.mlp.hook_topk_weights"], weights)
        if hooked_cache is None:
            continue
        ours = by_expert(cache[f"blocks.{i}.mlp.hook_expert_indices"], cache[f"blocks.{i}.mlp.hook_topk_weights"])
        theirs = by_expert(hooked_cache[f"blocks.{i}.mlp.hook_expert_indices"],
                           hooked_cache[f"blocks.{i}.mlp.hook_topk_weights"])
        assert hooked_cache[f"blocks.{i}.mlp.hook_topk_weights"].shape == (toks.numel(), k)
        assert torch.equal(ours[0], theirs[0])
        assert (ours[1] - theirs[1]).abs().max() < 1e-5
    assert "blocks.0.mlp.hook_expert_indices" not in cache  # dense layer: no router, as in HookedTransformer


def test_editing_topk_weights_changes_the_routed_output(ckpt: tuple[str, dict, object]) -> None:
    path, config, reference = ckpt
    toks = tokens(config)
    bridge = boot(path)
    layer = config["first_k_dense_replace"]
    with torch.no_grad():
        plain = bridge(toks)  # type: ignore[operator]
        zeroed = bridge.run_with_hooks(  # type: ignore[attr-defined]
            toks, fwd_hooks=[(f"blocks.{layer}.mlp.hook_topk_weights", lambda w, hook: torch.zeros_like(w))])
        ref_layer = reference.model.layers[layer].mlp  # type: ignore[attr-defined]
        handle = ref_layer.gate.register_forward_hook(lambda m, a, o: (o[0], torch.zeros_like(o[1]), o[2]))
        try:
            expected = reference(toks).logits  # type: ignore[operator]
        finally:
            handle.remove()
    assert (zeroed - plain).abs().max() > 1e-2
    assert (zeroed - expected).abs().max() < 1e-4


def test_cached_generation_equals_transformers(ckpt: tuple[str, dict, object]) -> None:
    """Cached and uncached greedy generation on the R1 bridge equal transformers' own (the decode steps see the
    cache: under transformers 5.2x the bridge's attention got it as `cache=`, which tl_bridge_generation hands on)."""
    path, config, reference = ckpt
    toks = tokens(config, (1, 7))
    with torch.no_grad():
        expected = reference.generate(toks, max_new_tokens=8, do_sample=False)  # type: ignore[attr-defined]
        bridge = boot(path)
        cached = bridge.generate(toks, max_new_tokens=8, do_sample=False, use_past_kv_cache=True, verbose=False)  # type: ignore[attr-defined]
        uncached = bridge.generate(toks, max_new_tokens=8, do_sample=False, use_past_kv_cache=False, verbose=False)  # type: ignore[attr-defined]
    assert torch.equal(cached, expected) and torch.equal(uncached, expected)


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_without_r1_plugin_transformer_lens_is_stock() -> None:
    out = run_python("""
        import sys
        from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory as F
        from transformer_lens.model_bridge import TransformerBridge
        boot = TransformerBridge.__dict__["boot_transformers"].__func__
        print(F._adapters["DeepseekV3ForCausalLM"].__module__, hasattr(boot, "_r1_plugin_patched"),
              any(m.startswith("r1_plugin") for m in sys.modules))
    """)
    assert out == "transformer_lens.model_bridge.supported_architectures.deepseek_v3 False False"


def test_importing_r1_plugin_first_applies_on_transformer_lens_import() -> None:
    out = run_python("""
        import r1_plugin
        from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory as F
        from transformer_lens.model_bridge import TransformerBridge
        boot = TransformerBridge.__dict__["boot_transformers"].__func__
        print(F._adapters["DeepseekV3ForCausalLM"].__name__, getattr(boot, "_r1_plugin_patched", False))
    """)
    assert out == "R1BridgeAdapter True"


def test_patch_is_idempotent() -> None:
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge import TransformerBridge

    from r1_plugin._patches import tl_bridge

    before = TransformerBridge.__dict__["boot_transformers"]
    tl_bridge.apply()
    tl_bridge.apply()
    after = TransformerBridge.__dict__["boot_transformers"]
    assert after.__func__ is before.__func__
    assert after.__func__.__wrapped_original__.__module__.startswith("transformer_lens.")
    assert ArchitectureAdapterFactory._adapters[ARCH].__name__ == "R1BridgeAdapter"
    assert tl_bridge.stock_adapter().__module__.startswith("transformer_lens.")  # type: ignore[union-attr]
