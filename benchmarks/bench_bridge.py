"""HookedTransformer or TransformerBridge for R1: both paths on the same FP8 checkpoint (mid-size random R1 config,
128x128 FP8 blocks), each measured against transformers' DeepseekV3ForCausalLM on the exactly dequantised float32
weights in the same run: logits difference, KV-cache bytes per token, forward and decode time ratios, FP8
residency, and the MLA/MoE hooks each path has.

Run by hand: `nice .venv/bin/python benchmarks/bench_bridge.py [--quick]`; results go to docs/bridge.md and
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402

from r1_plugin.testing.deepseek_checkpoints import BENCH_DIMS  # noqa: E402

MID = BENCH_DIMS  # the reference config (r1_plugin.testing.deepseek_checkpoints)
BLOCK = (128, 128)


def cpu_times(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median CPU seconds of each function, all interleaved in every round (load hits each alike)."""
    for fn in fns.values():
        fn()  # type: ignore[operator]
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()  # type: ignore[operator]
            times[name].append(time.process_time() - start)
    return {name: sorted(t)[repeats // 2] for name, t in times.items()}


def cache_bytes_per_token(cache: object, tokens: int) -> float:
    """Bytes a transformers Cache holds per token (all layers), from its tensors."""
    total = 0
    for layer in cache.layers:  # type: ignore[attr-defined]
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    import r1_plugin  # noqa: F401
    from r1_plugin.models.deepseek_v3.fp8 import dequantize_blockwise
    from r1_plugin.models.deepseek_v3.fp8_weights import resident_bytes
    from r1_plugin.models.device_plan import kv_numbers_per_token
    from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="bench_bridge_")) / "ckpt"
    config = tiny_config(**MID)
    written = write_tiny_checkpoint(config=config, seed=0, storage="fp8", n_shards=2, block_size=BLOCK, folder=folder)
    exact = {k: (dequantize_blockwise(v, written.tensors[k + "_scale_inv"], BLOCK, torch.float32)
                 if v.dtype == torch.float8_e4m3fn else v.float())
             for k, v in written.tensors.items() if not k.endswith("_scale_inv")}
    reference = hf_reference_model(config, exact)  # eager attention, transformers' default (grouped_mm) experts
    path = str(folder)
    models = {
        "hooked": HookedTransformer.from_pretrained_no_processing(path, device="cpu", dtype=torch.float32,
                                                                  progress=False),
        "hooked_fp8": HookedTransformer.from_pretrained_no_processing(path, device="cpu", dtype=torch.float32,
                                                                      keep_fp8=True, progress=False),
        "bridge": TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32),
        "bridge_fp8": TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32, keep_fp8=True),
    }
    n_tok = 32 if args.quick else 128
    repeats = 3 if args.quick else 5
    toks = torch.randint(2, config["vocab_size"], (2, n_tok), generator=torch.Generator().manual_seed(0))
    out: dict[str, object] = {"config": MID, "tokens": list(toks.shape)}
    with torch.no_grad():
        expected = reference(toks).logits
        out["logits_max_abs_diff_vs_transformers"] = {
            name: float((model(toks) - expected).abs().max()) for name, model in models.items()  # type: ignore[operator]
        }
        fwd = cpu_times({"transformers": lambda: reference(toks),
                         **{name: (lambda m=model: m(toks)) for name, model in models.items()}}, repeats)
        out["forward_cpu_s"] = fwd
        out["forward_ratio_vs_transformers"] = {k: fwd[k] / fwd["transformers"] for k in models}
        prompt = toks[:1, :32]
        new = 8 if args.quick else 32
        gen = {
            "transformers": lambda: reference.generate(prompt, max_new_tokens=new, do_sample=False),
            # stop_at_eos=False: the tiny tokenizer's EOS is not config.json's eos_token_id that transformers stops at
            **{name: (lambda m=model: m.generate(prompt, max_new_tokens=new, do_sample=False, use_past_kv_cache=True,
                                                 stop_at_eos=False, verbose=False)) for name, model in models.items()},
        }
        dec = cpu_times(gen, max(3, repeats // 2))
        out["decode_cpu_s"] = dec
        out["decode_ratio_vs_transformers"] = {k: dec[k] / dec["transformers"] for k in models}
        greedy = reference.generate(prompt, max_new_tokens=new, do_sample=False)
        out["greedy_equals_transformers"] = {k: bool(torch.equal(fn(), greedy)) for k, fn in gen.items()  # type: ignore[operator]
                                             if k != "transformers"}
        hf_cache = reference(prompt, use_cache=True).past_key_values
        bridge_cache = models["bridge"].original_model(prompt, use_cache=True).past_key_values  # type: ignore[attr-defined]
    layers = config["num_hidden_layers"]
    out["kv_cache_bytes_per_token_float32"] = {
        "hooked (latent, r1_plugin)": kv_numbers_per_token(config, "hooked") * 4 * layers,
        "bridge (per-head K/V), measured": cache_bytes_per_token(bridge_cache, prompt.shape[1]),
        "transformers own cache, measured": cache_bytes_per_token(hf_cache, prompt.shape[1]),
    }
    out["resident_block_bytes"] = {
        "hooked": resident_bytes(models["hooked"].blocks), "hooked_fp8": resident_bytes(models["hooked_fp8"].blocks),
        "bridge": resident_bytes(models["bridge"].original_model.model.layers),  # type: ignore[attr-defined]
        "bridge_fp8": resident_bytes(models["bridge_fp8"].original_model.model.layers),  # type: ignore[attr-defined]
    }
    hooks = {}
    for name in ("hooked", "bridge"):
        names = models[name].hook_dict  # type: ignore[attr-defined]
        hooks[name] = sorted(k.removeprefix("blocks.1.") for k in names
                             if k.startswith(("blocks.1.attn.hook", "blocks.1.mlp.hook", "blocks.1.mlp.gate.hook")))
    out["hooks_block_1"] = hooks
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
