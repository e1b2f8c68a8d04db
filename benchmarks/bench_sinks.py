"""Peak memory of the sink detector (query chunks over the KV cache) vs `run_with_cache` patterns, on a long input.

Each method runs in a fresh subprocess and reports its peak RSS growth over the model-loaded baseline, plus the
largest attention tensor built and what the hooks keep. CPU, random rotary model, no timing claims.
Run by hand: `.venv/bin/python benchmarks/bench_sinks.py [--seq 2048] [--chunk 256]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _model(seq: int) -> object:
    """A random 4-layer, 8-head rotary HookedTransformer with context `seq`."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=4, d_model=256, n_ctx=seq, d_head=32, n_heads=8, d_vocab=1000, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", seed=0,
    )
    return HookedTransformer(cfg)


def _child(method: str, seq: int, chunk: int) -> dict[str, float]:
    """Run one method and return peak-RSS growth (MiB) and tensor-size measurements."""
    import torch

    torch.set_num_threads(2)
    model = _model(seq)
    tokens = torch.randint(0, 1000, (1, seq), generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, float] = {}
    with torch.no_grad():
        if method == "run_with_cache":
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
            alpha = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(4)]).sum(-2)
            out["kept_numel"] = float(sum(t.numel() for t in cache.values()))
            del alpha
        else:
            from r1_plugin.sinks import scan_sinks

            result = scan_sinks(model, tokens, chunk_size=chunk if method == "chunked" else None)
            out["kept_numel"] = float(result.kept_numel)
            out["max_pattern_numel"] = float(result.max_pattern_numel)
    out["peak_rss_growth_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return out


def main() -> None:
    """Run every method in a subprocess and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.seq, args.chunk)))
        return
    print(f"seq {args.seq}, chunk {args.chunk}, 4 layers x 8 heads")
    for method in ("run_with_cache", "one_forward", "chunked"):
        cmd = [sys.executable, __file__, "--child", method, "--seq", str(args.seq), "--chunk", str(args.chunk)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{method:15s} " + "  ".join(f"{k} {v:,.0f}" for k, v in res.items()))


if __name__ == "__main__":
    main()
