"""GPU check for full R1 on one node (issue #12): R1-dimension layers with random FP8 weights, keep_fp8 on vs off.

Run by hand on a machine with one NVIDIA GPU (written for an H200; under 5 minutes, no hub access, no files):

    python benchmarks/gpu_check.py                # R1 dimensions on cuda:0
    python benchmarks/gpu_check.py --dry-run      # tiny dimensions on the CPU (what the test suite runs)

It builds, directly on the device, a DeepSeek-V3 HookedTransformer with R1's dimensions (d_model 7168, MLA with
R1's ranks and head dims, 256 routed experts of 2048 with top-8 group routing, 1 shared expert): one dense layer
plus as many MoE layers as fit (at least 2), with R1's embedding and unembedding, through the streaming loader's
own store path (`r1_plugin.testing.deepseek_checkpoints.random_fp8_model`). The same seed gives the same weights in
both modes. For keep_fp8 on and off it measures: resident bytes per MoE layer; prefill tokens/s (1 x 2048
tokens); decode tokens/s at batch 1 and 8 against a latent KV cache of `--context` tokens; the overhead of gated
steering (an added direction from a position gate) and of an SAE clamp (a 7168 x 28672 SAE on the same GPU) on
decode; the max |logit difference| between the modes; peak memory. It prints a table and one JSON line, then
extrapolates to full R1 (61 layers) and R1[:38] on 8 x H200 and 8 x H100 with a 4k-token trace (method in
docs/scale.md and `extrapolate`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# DeepSeek-R1's published config.json (the fields the model needs; vocab and dims as released).
R1_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": False,
    "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048, "moe_layer_freq": 1,
    "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "v_head_dim": 128, "vocab_size": 129280,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}
# --dry-run: the same structure at tiny width (partial 16x16 blocks included).
TINY_CONFIG: dict[str, Any] = {
    **R1_CONFIG, "first_k_dense_replace": 1, "hidden_size": 64, "intermediate_size": 96, "kv_lora_rank": 24,
    "moe_intermediate_size": 32, "n_group": 4, "n_routed_experts": 16, "num_attention_heads": 4,
    "num_experts_per_tok": 4, "num_key_value_heads": 4, "q_lora_rank": 40, "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8, "topk_group": 2, "v_head_dim": 12, "vocab_size": 512,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [16, 16]},
}
H200_DECODE_OVER_H100 = 4.8 / 3.35  # HBM bandwidth ratio: decode is bandwidth-bound; prefill taken as equal


class Clock:
    """Wall time on the device: synchronises CUDA around each measurement."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def time(self, fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
        """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
        for _ in range(warmup):
            fn()
        runs = []
        for _ in range(repeats):
            t0 = self.now()
            fn()
            runs.append(self.now() - t0)
        return sorted(runs)[len(runs) // 2]


@contextmanager
def block_timer(model: Any, clock: Clock) -> Iterator[dict[int, list[float]]]:
    """Per-block forward seconds (hooks on each block; synchronising, so only used in a separate timed pass)."""
    times: dict[int, list[float]] = defaultdict(list)
    handles, starts = [], {}
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: starts.__setitem__(i, clock.now())))
        handles.append(block.register_forward_hook(lambda m, a, o, i=i: times[i].append(clock.now() - starts[i])))
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


def make_sae(d_in: int, d_sae: int, hook: str, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """A random SAELens standard SAE on `device` (features fire: positive encoder bias)."""
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, dtype=str(dtype).removeprefix("torch."), device=str(device),
                            metadata=SAEMetadata(hook_name=hook))
    sae = SAE.from_dict(cfg.to_dict())
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen, device=device) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=gen, device=device) / d_sae**0.5)
        sae.b_enc.fill_(0.1)
    return sae.eval()


def filled_cache(model: Any, batch: int, context: int, seed: int) -> Any:
    """A latent KV cache holding `context` random positions per layer (a trace of that length)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cfg = model.cfg
    cache = TransformerLensKeyValueCache.init_cache(cfg, cfg.device, batch)
    gen = torch.Generator(device=cfg.device).manual_seed(seed)
    for entry in cache.entries:
        dev = entry.past_latent.device
        entry.past_latent = torch.randn((batch, context, cfg.kv_cache_width), generator=gen, device=dev).to(cfg.dtype)
    cache.previous_attention_mask = torch.ones((batch, context), dtype=torch.int, device=cfg.device)
    return cache


def decode_seconds(model: Any, batch: int, context: int, steps: int, clock: Clock, seed: int) -> float:
    """Seconds per decode step (median over `steps`), batch rows against a `context`-token cache."""
    cache = filled_cache(model, batch, context, seed)
    token = torch.zeros((batch, 1), dtype=torch.long, device=model.cfg.device)
    mask = torch.ones((batch, 1), dtype=torch.long, device=model.cfg.device)  # no tokenizer to derive it from

    def step() -> None:
        model(token, past_kv_cache=cache, attention_mask=mask)

    return clock.time(step, repeats=steps, warmup=1)


def measure(model: Any, args: argparse.Namespace, clock: Clock, sae: Any) -> tuple[dict[str, Any], torch.Tensor]:
    """Everything the check reports for one mode; also the prefill logits (for the cross-mode difference)."""
    from r1_plugin.models.deepseek_v3.fp8_weights import resident_bytes
    from r1_plugin.steering import FromPosition, steer

    cfg, device = model.cfg, torch.device(model.cfg.device)
    tokens = torch.randint(0, cfg.d_vocab, (1, args.prefill_tokens), device=device,
                           generator=torch.Generator(device=device).manual_seed(args.seed))
    out: dict[str, Any] = {"moe_layers": cfg.n_layers - 1}
    out["resident_bytes_per_moe_layer"] = resident_bytes(model.blocks[1])
    out["resident_bytes_dense_layer"] = resident_bytes(model.blocks[0])
    with torch.no_grad():
        logits = model(tokens)
        prefill = clock.time(lambda: model(tokens), repeats=args.repeats, warmup=0)
        out["prefill_tokens_per_s"] = args.prefill_tokens / prefill
        with block_timer(model, clock) as times:
            model(tokens)
        out["prefill_s_dense_layer"] = times[0][0]
        out["prefill_s_moe_layer"] = sum(times[i][0] for i in range(1, cfg.n_layers)) / (cfg.n_layers - 1)
        out["prefill_s_total"] = prefill
        for batch in (1, 8):
            s = decode_seconds(model, batch, args.context, args.decode_steps, clock, args.seed)
            out[f"decode_b{batch}_tokens_per_s"] = batch / s
            out[f"decode_b{batch}_s_step"] = s
        with block_timer(model, clock) as times:
            decode_seconds(model, 1, args.context, 2, clock, args.seed)
        out["decode_s_dense_layer"] = min(times[0])
        out["decode_s_moe_layer"] = sum(min(times[i]) for i in range(1, cfg.n_layers)) / (cfg.n_layers - 1)
        hook = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
        direction = torch.randn(cfg.d_model, device=device, dtype=cfg.dtype)
        base = out["decode_b1_s_step"]
        with steer(model, hook_name=hook, direction=direction, strength=4.0, gate=FromPosition(0)):
            out["steer_decode_overhead"] = decode_seconds(model, 1, args.context, args.decode_steps, clock,
                                                          args.seed) / base - 1
        with steer(model, sae=sae, feature=[7], mode="clamp", strength=5.0, gate=FromPosition(0)):
            out["sae_clamp_decode_overhead"] = decode_seconds(model, 1, args.context, args.decode_steps, clock,
                                                              args.seed) / base - 1
    if device.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return out, logits.float().cpu()


def moe_layers_that_fit(config: dict[str, Any], args: argparse.Namespace, device: torch.device) -> int:
    """As many MoE layers as fit beside one dense layer, embeddings, the SAE and the working set (>= 2)."""
    if args.moe_layers:
        return args.moe_layers
    if device.type != "cuda":
        return 2
    from r1_plugin.models.device_plan import model_bytes

    dtype = str(args.dtype)
    sizes = model_bytes({**config, "num_hidden_layers": 2, "first_k_dense_replace": 1}, dtype, keep_fp8=False,
                        kv_cache_tokens=args.prefill_tokens)
    itemsize = torch.tensor([], dtype=args.dtype).element_size()
    sae_bytes = 2 * config["hidden_size"] * args.d_sae * itemsize
    kv = 8 * args.context * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * itemsize
    fixed = sizes.embed + sizes.unembed + sizes.blocks[0] + sae_bytes + sizes.activations + sizes.logits
    free = torch.cuda.mem_get_info(device)[0] * 0.92
    return max(2, min(args.max_moe_layers, int((free - fixed) // (sizes.blocks[1] + kv))))


def extrapolate(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Full R1 and R1[:38] on 8 x H200 / 8 x H100 with a `context`-token trace, from the measured per-layer times.

    TransformerLens runs the devices one after another (pipeline without overlap), so a forward costs the sum of
    its layers: embed/unembed (measured total minus the measured blocks) + 3 x dense + (n - 3) x MoE layer time.
    Decode is memory-bound: H100 times are H200 times x 4.8/3.35 (HBM bandwidth); prefill is taken as equal.
    Inter-device residual copies (7 per forward, 14 KB per token) are neglected. Fit comes from plan_devices (in
    bfloat16, with the trace's latent KV cache and its prefill as the activation allowance).
    """
    from r1_plugin import plan_devices

    rows = []
    for name, n_layers in (("R1", 61), ("R1[:38]", 38)):
        for gpu, memory, slow in (("8xH200", "141GB", 1.0), ("8xH100", "80GB", H200_DECODE_OVER_H100)):
            for mode, r in results.items():
                keep = mode == "keep_fp8"
                moe = n_layers - 3
                measured_moe = r["moe_layers"]
                tail = max(0.0, r["prefill_s_total"] - r["prefill_s_dense_layer"] - measured_moe * r["prefill_s_moe_layer"])
                prefill = (tail + 3 * r["prefill_s_dense_layer"] + moe * r["prefill_s_moe_layer"]) * (
                    args.trace_tokens / args.prefill_tokens)
                decode_tail = max(0.0, r["decode_b1_s_step"] - r["decode_s_dense_layer"] - measured_moe * r["decode_s_moe_layer"])
                decode = (decode_tail + 3 * r["decode_s_dense_layer"] + moe * r["decode_s_moe_layer"]) * slow
                plan = plan_devices(R1_CONFIG, 8, memory, "bfloat16", keep_fp8=keep,
                                    first_n_layers=None if n_layers == 61 else n_layers,
                                    kv_cache_tokens=args.trace_tokens)
                rows.append({"model": name, "gpus": gpu, "mode": mode, "fits": plan.fits,
                             "weights_gb": plan.total_weights / 1e9,
                             "max_device_gb": max(d.total for d in plan.devices) / 1e9,
                             "prefill_s": prefill, "decode_tokens_per_s": 1 / decode})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the table, the JSON line and the extrapolation."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny dimensions on the CPU (float32)")
    parser.add_argument("--device", default=None, help="default cuda:0 (cpu with --dry-run)")
    parser.add_argument("--moe-layers", type=int, default=0, help="default: as many as fit (at least 2)")
    parser.add_argument("--max-moe-layers", type=int, default=6, help="cap on the automatic count (time budget)")
    parser.add_argument("--prefill-tokens", type=int, default=None, help="default 2048 (32 with --dry-run)")
    parser.add_argument("--context", type=int, default=None, help="decode KV-cache length, default 4096 (64)")
    parser.add_argument("--trace-tokens", type=int, default=4096, help="trace length of the extrapolation")
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=None, help="default 28672 (4 x d_model; 256 with --dry-run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import r1_plugin  # noqa: F401  (DeepSeek-V3 patches)
    from r1_plugin.testing.deepseek_checkpoints import random_fp8_model

    dry = args.dry_run
    config = TINY_CONFIG if dry else R1_CONFIG
    device = torch.device(args.device or ("cpu" if dry else "cuda:0"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    args.dtype = torch.float32 if dry else torch.bfloat16
    args.prefill_tokens = args.prefill_tokens or (32 if dry else 2048)
    args.context = args.context or (64 if dry else 4096)
    args.d_sae = args.d_sae or (256 if dry else 4 * config["hidden_size"])
    n_moe = moe_layers_that_fit(config, args, device)
    layer_config = {**config, "num_hidden_layers": 1 + n_moe, "first_k_dense_replace": 1}
    block = tuple(config["quantization_config"]["weight_block_size"])
    clock = Clock(device)
    sae = make_sae(config["hidden_size"], args.d_sae, f"blocks.{n_moe}.hook_resid_post", device, args.dtype,
                   args.seed)
    results: dict[str, dict[str, Any]] = {}
    logits: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for mode in ("keep_fp8", "dequantised"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        model = random_fp8_model(layer_config, device=device, dtype=args.dtype, keep_fp8=mode == "keep_fp8",
                                 seed=args.seed, n_ctx=max(8192, args.context + 64), block_size=block)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        results[mode], logits[mode] = measure(model, args, clock, sae)
        results[mode]["build_s"] = build_s
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    max_diff = (logits["keep_fp8"] - logits["dequantised"]).abs().max().item()
    keys = [k for k in results["keep_fp8"] if isinstance(results["keep_fp8"][k], (int, float))]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dtype {args.dtype}, 1 dense + {n_moe} MoE layers, d_model {config['hidden_size']}, "
          f"{config['n_routed_experts']} experts, SAE {config['hidden_size']}x{args.d_sae}")
    print(f"{'metric':34} {'keep_fp8':>14} {'dequantised':>14} {'ratio':>7}")
    for key in keys:
        a, b = results["keep_fp8"][key], results["dequantised"][key]
        ratio = f"{a / b:7.3f}" if b else "      -"
        print(f"{key:34} {a:14.6g} {b:14.6g} {ratio}")
    print(f"{'max |logit diff| between modes':34} {max_diff:14.3g}")
    rows = extrapolate(results, args)
    summary = {"dry_run": dry, "device": str(device), "dtype": str(args.dtype), "moe_layers": n_moe,
               "max_abs_logit_diff": max_diff, "results": results, "extrapolation": rows,
               "seconds": time.perf_counter() - started}
    print(json.dumps(summary))
    print(f"extrapolation ({args.trace_tokens}-token trace; method: docs/scale.md):")
    print(f"{'model':8} {'gpus':7} {'mode':12} {'fits':>5} {'weights GB':>10} {'max dev GB':>10} "
          f"{'prefill s':>10} {'decode tok/s':>12}")
    for r in rows:
        print(f"{r['model']:8} {r['gpus']:7} {r['mode']:12} {str(r['fits']):>5} {r['weights_gb']:10.1f} "
              f"{r['max_device_gb']:10.1f} {r['prefill_s']:10.2f} {r['decode_tokens_per_s']:12.2f}")
    return 0 if math.isfinite(max_diff) else 1


if __name__ == "__main__":
    raise SystemExit(main())
