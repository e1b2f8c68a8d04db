"""DeepSeek-V3 HookedTransformer vs transformers on a mid-size random config (CPU): forward time (wall and CPU
time, per component), greedy generation speed, KV-cache bytes per token, peak RSS while streaming a multi-shard
FP8 checkpoint, and keep_fp8 against the dequantise-on-load model (resident bytes of the blocks, forward time).

Run by hand: `nice .venv/bin/python benchmarks/bench_deepseek.py [--quick] [--only compute fp8 loading]`;
results go to docs/benchmarks.md and docs/models-deepseek.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="bench_deepseek_"))
os.environ.setdefault("HF_HUB_CACHE", str(_TMP / "hf"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402

from r1_plugin.testing.deepseek_checkpoints import BENCH_DIMS  # noqa: E402

MID = BENCH_DIMS  # the reference config (r1_plugin.testing.deepseek_checkpoints)


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median wall time of two functions over `repeats` runs, interleaved so machine load hits both alike."""
    fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return sorted(times_a)[repeats // 2], sorted(times_b)[repeats // 2]


def attention_times(model, hf, repeats: int) -> dict:
    """MLA alone, ours vs transformers', every layer on the same normalised input [4, 256, d_model]: median wall
    and CPU seconds per forward (all layers), interleaved. HF's cos/sin and causal mask are built once outside
    the timing, as its model does once per forward; ours are looked up inside (a cached table and mask)."""
    x = torch.randn(4, 256, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
    cos_sin = hf.model.rotary_emb(x, positions)
    mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)[None, None].expand(x.shape[0], 1, -1, -1)
    ours = [block.attn for block in model.blocks]
    theirs = [layer.self_attn for layer in hf.model.layers]
    max_diff = max((a(x) - b(x, cos_sin, mask)[0]).abs().max().item() for a, b in zip(ours, theirs))

    def run_ours() -> None:
        for attn in ours:
            attn(x)

    def run_theirs() -> None:
        for attn in theirs:
            attn(x, cos_sin, mask)

    wall_tl, wall_hf = timed_pair(run_ours, run_theirs, repeats)
    cpu_tl, cpu_hf = cpu_timed_pair(run_ours, run_theirs, repeats)
    return {
        "attention_input": list(x.shape), "attention_max_abs_diff": max_diff,
        "attention_tl_s": wall_tl, "attention_hf_s": wall_hf, "attention_ratio": wall_tl / wall_hf,
        "attention_tl_cpu_s": cpu_tl, "attention_hf_cpu_s": cpu_hf, "attention_cpu_ratio": cpu_tl / cpu_hf,
    }


def cpu_timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median CPU seconds (this process, `time.process_time`) of two functions, interleaved: with one torch thread
    this is the work done, undistorted by other load on a shared machine (wall time is not)."""
    fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
    return sorted(times_a)[repeats // 2], sorted(times_b)[repeats // 2]


def component_cpu_times(model, hf, tokens: torch.Tensor, repeats: int) -> dict:
    """Median CPU seconds per forward spent in attention, dense MLP, MoE (and its routed experts), TL vs HF."""
    acc: dict[str, list[float]] = {}
    handles = []

    def wrap(module, key: str) -> None:
        start: dict[str, float] = {}
        handles.append(module.register_forward_pre_hook(lambda m, a: start.__setitem__("t", time.process_time())))
        handles.append(module.register_forward_hook(
            lambda m, a, o: acc.setdefault(key, []).append(time.process_time() - start["t"])))

    for block, layer in zip(model.blocks, hf.model.layers):
        kind = "moe" if block.is_moe else "dense_mlp"
        wrap(block.attn, "tl_attention"), wrap(layer.self_attn, "hf_attention")
        wrap(block.mlp, f"tl_{kind}"), wrap(layer.mlp, f"hf_{kind}")
        if block.is_moe:
            wrap(block.mlp.experts, "tl_routed_experts"), wrap(layer.mlp.experts, "hf_routed_experts")
    try:
        for _ in range(repeats):
            model(tokens), hf(tokens)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for key, values in sorted(acc.items()):
        per = len(values) // repeats
        sums = sorted(sum(values[r * per : (r + 1) * per]) for r in range(repeats))
        out[key] = sums[repeats // 2]
    return out


def bench_compute(quick: bool, only_forward: bool = False) -> dict:
    """Forward (whole, per component, MLA alone) and generation: TL (via from_pretrained_no_processing) vs HF on
    the same float32 weights; `only_forward` skips generation."""
    from transformer_lens import HookedTransformer

    import r1_plugin  # noqa: F401
    from r1_plugin.models.deepseek_v3.kv_cache import DeepseekLatentKVCache
    from r1_plugin.testing.deepseek_checkpoints import hf_reference_model, tiny_config, write_tiny_checkpoint

    name = "deepseek-ai/DeepSeek-R1"
    ck = write_tiny_checkpoint(name, tiny_config(**MID), seed=0)
    model = HookedTransformer.from_pretrained_no_processing(name, device="cpu")
    hf = hf_reference_model(ck.config, ck.tensors)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    tokens = torch.randint(2, ck.config["vocab_size"], (4, 256), generator=torch.Generator().manual_seed(0))
    repeats = 3 if quick else 9
    with torch.inference_mode():
        max_diff = (model(tokens) - hf(tokens).logits).abs().max().item()
        t_tl, t_hf = timed_pair(lambda: model(tokens), lambda: hf(tokens), repeats)
        c_tl, c_hf = cpu_timed_pair(lambda: model(tokens), lambda: hf(tokens), repeats)
        components = component_cpu_times(model, hf, tokens, 3 if quick else 5)
        attention = attention_times(model, hf, 5 if quick else 15)
        if only_forward:
            return {
                "forward_tokens": list(tokens.shape), "forward_tl_s": t_tl, "forward_hf_s": t_hf,
                "forward_ratio": t_tl / t_hf, "forward_tl_cpu_s": c_tl, "forward_hf_cpu_s": c_hf,
                "forward_cpu_ratio": c_tl / c_hf, "forward_cpu_s_by_component": components,
                "max_abs_logit_diff": max_diff, **attention,
            }
        prompt, new = tokens[:1, :32], 32 if quick else 64
        kw = dict(max_new_tokens=new, do_sample=False, stop_at_eos=False, verbose=False)
        g_tl, g_hf = timed_pair(
            lambda: model.generate(prompt, use_past_kv_cache=True, **kw),
            lambda: hf.generate(prompt, max_new_tokens=new, do_sample=False),
            2 if quick else 3,
        )
        same = torch.equal(model.generate(prompt, **kw), hf.generate(prompt, max_new_tokens=new, do_sample=False))
        long_prompt, long_new = tokens[:1, :] if quick else torch.cat([tokens[:1], tokens[1:2]], dim=1), 32
        lg_tl, lg_hf = timed_pair(
            lambda: model.generate(long_prompt, use_past_kv_cache=True, **{**kw, "max_new_tokens": long_new}),
            lambda: hf.generate(long_prompt, max_new_tokens=long_new, do_sample=False),
            2 if quick else 3,
        )
    latent = DeepseekLatentKVCache.bytes_per_token(model.cfg)
    full = DeepseekLatentKVCache.full_kv_bytes_per_token(model.cfg)
    return {
        "forward_tokens": list(tokens.shape), "forward_tl_s": t_tl, "forward_hf_s": t_hf, "forward_ratio": t_tl / t_hf,
        "forward_tl_cpu_s": c_tl, "forward_hf_cpu_s": c_hf, "forward_cpu_ratio": c_tl / c_hf,
        "forward_cpu_s_by_component": components, **attention,
        "max_abs_logit_diff": max_diff, "gen_new_tokens": new, "gen_tl_tok_s": new / g_tl, "gen_hf_tok_s": new / g_hf,
        "gen_same_tokens_as_hf": same, "gen_ratio_tl_over_hf_tok_s": g_hf / g_tl,
        "long_gen_prompt": long_prompt.shape[1], "long_gen_new_tokens": long_new, "long_gen_tl_tok_s": long_new / lg_tl,
        "long_gen_hf_tok_s": long_new / lg_hf, "long_gen_ratio_tl_over_hf_tok_s": lg_hf / lg_tl, "kv_latent_bytes_per_token": latent, "kv_full_bytes_per_token": full,
        "kv_ratio": full / latent,
    }


def bench_fp8(quick: bool) -> dict:
    """keep_fp8 vs the dequantise-on-load model on the mid config's FP8 checkpoint (128x128 blocks): resident bytes
    of the blocks (float32 and bfloat16 dequantised) and forward CPU time (float32), with the logit difference."""
    from transformer_lens import HookedTransformer

    import r1_plugin  # noqa: F401
    from r1_plugin.models.deepseek_v3.fp8_weights import resident_bytes
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    folder = _TMP / "fp8_mid"
    config = tiny_config(**MID)
    write_tiny_checkpoint(config=config, seed=0, storage="fp8", n_shards=2, block_size=(128, 128), folder=folder)

    def load(keep_fp8: bool, dtype: torch.dtype):
        return HookedTransformer.from_pretrained_no_processing(
            str(folder), device="cpu", dtype=dtype, keep_fp8=keep_fp8, progress=False
        )

    plain, kept = load(False, torch.float32), load(True, torch.float32)
    plain_bf16, kept_bf16 = load(False, torch.bfloat16), load(True, torch.bfloat16)
    tokens = torch.randint(2, config["vocab_size"], (4, 256), generator=torch.Generator().manual_seed(0))
    decode = tokens[:, :1]
    repeats = 3 if quick else 7
    with torch.inference_mode():
        diff = (kept(tokens) - plain(tokens)).abs().max().item()
        diff_bf16 = (kept_bf16(tokens).float() - plain_bf16(tokens).float()).abs().max().item()
        bf16_noise = (plain_bf16(tokens).float() - plain(tokens)).abs().max().item()
        t_kept, t_plain = cpu_timed_pair(lambda: kept(tokens), lambda: plain(tokens), repeats)
        d_kept, d_plain = cpu_timed_pair(lambda: kept(decode), lambda: plain(decode), repeats)
    b_kept, b_plain, b_bf16 = resident_bytes(kept.blocks), resident_bytes(plain.blocks), resident_bytes(plain_bf16.blocks)
    return {
        "blocks_bytes_keep_fp8": b_kept, "blocks_bytes_float32": b_plain, "blocks_bytes_bfloat16": b_bf16,
        "ratio_vs_float32": b_kept / b_plain, "ratio_vs_bfloat16": b_kept / b_bf16,
        "max_abs_logit_diff_float32": diff, "max_abs_logit_diff_bfloat16": diff_bf16,
        "bfloat16_own_noise_vs_float32": bf16_noise,
        "forward_tokens": list(tokens.shape), "forward_keep_fp8_cpu_s": t_kept, "forward_dequantised_cpu_s": t_plain,
        "forward_ratio": t_kept / t_plain, "one_token_keep_fp8_cpu_s": d_kept, "one_token_dequantised_cpu_s": d_plain,
        "one_token_ratio": d_kept / d_plain,
    }


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process in bytes (/proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _load_child(folder: str) -> None:
    """Child process: load the FP8 checkpoint (bf16), sampling RSS split into anonymous and file-backed pages."""
    from transformer_lens import HookedTransformer

    import r1_plugin  # noqa: F401
    from r1_plugin.models.deepseek_v3.loading import release_freed_memory

    # Warm-up: load one layer first so lazy imports (tokenizer, safetensors, AutoConfig) are not counted.
    warm = HookedTransformer.from_pretrained_no_processing(
        folder, device="cpu", dtype=torch.bfloat16, first_n_layers=1, progress=False
    )
    del warm
    gc.collect()
    release_freed_memory()
    before = _status()
    peak = {"anon": before["RssAnon"], "rss": before["VmRSS"]}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = _status()
            peak["anon"], peak["rss"] = max(peak["anon"], now["RssAnon"]), max(peak["rss"], now["VmRSS"])
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model = HookedTransformer.from_pretrained_no_processing(folder, device="cpu", dtype=torch.bfloat16, progress=False)
    done.set()
    sampler.join()
    after = _status()
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if line.rstrip().endswith(".safetensors")}
    print(json.dumps({"before": before, "after": after, "peak": peak, "model_bytes": size, "mapped_shards": len(mapped)}))


def bench_loading(n_layers: int, n_shards: int) -> dict:
    """Peak RSS (total and anonymous) beyond the loaded parameters while streaming an FP8 checkpoint, per shard."""
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    folder = _TMP / f"fp8_{n_layers}x{n_shards}"
    config = tiny_config(**{**MID, "num_hidden_layers": n_layers})
    write_tiny_checkpoint(config=config, seed=1, storage="fp8", n_shards=n_shards, block_size=(128, 128), folder=folder)
    shards = sorted(folder.glob("*.safetensors"))
    out = subprocess.run([sys.executable, __file__, "--load-child", str(folder)], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    largest, model = max(p.stat().st_size for p in shards), stats["model_bytes"]
    rss_over = stats["peak"]["rss"] - stats["before"]["VmRSS"] - model
    anon_over = stats["peak"]["anon"] - stats["before"]["RssAnon"] - model
    return {
        "layers": n_layers, "shards": len(shards), "largest_shard_mb": largest / 1e6,
        "checkpoint_mb": sum(p.stat().st_size for p in shards) / 1e6, "model_mb_bf16": model / 1e6,
        "peak_rss_overhead_mb": rss_over / 1e6, "peak_rss_overhead_vs_largest_shard": rss_over / largest,
        "peak_anon_overhead_mb": anon_over / 1e6,
        "final_file_backed_growth_mb": (stats["after"]["RssFile"] - stats["before"]["RssFile"]) / 1e6,
        "shards_still_mapped": stats["mapped_shards"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reported ratios use 2)")
    parser.add_argument(
        "--only", nargs="+", choices=["compute", "forward", "fp8", "loading"], default=["compute", "fp8", "loading"],
        help="forward: the forward comparisons of compute only (whole, per component, MLA alone), no generation",
    )
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        _load_child(args.load_child)
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    results: dict = {"load_average_start": os.getloadavg()[0], "threads": torch.get_num_threads()}
    if "compute" in args.only or "forward" in args.only:
        results["compute"] = bench_compute(args.quick, only_forward="compute" not in args.only)
    if "fp8" in args.only:
        results["fp8"] = bench_fp8(args.quick)
    if "loading" in args.only:
        results["loading"] = [bench_loading(layers, shards) for layers, shards in ((4, 4), (8, 8), (16, 4), (16, 16))]
    results["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
