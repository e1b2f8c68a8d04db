"""Benchmark: generation tokens/s with gated steering vs none, and the gate's cost per generated token.

Run by hand: `.venv/bin/python benchmarks/bench_steering.py [--sizes tiny small] [--tokens 64] [--repeats 5]`.
Builds random distill checkpoints (Qwen2 layout) in a temporary HF cache, so it needs no download. Runs are
interleaved (none, gate A, gate B, ... per repeat) and the median is reported. Times are this process's CPU time
(`time.process_time`) with one torch thread by default, so other load on the machine does not distort them;
tokens/s are per CPU-second. "gate cost" is the time spent deciding the gate (position tracking + gate + mask), measured inside
the hook, per generated token (per decode step of the batch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "HF_HUB_CACHE" not in os.environ:
    os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="bench_steering_hf_")

import torch  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},  # the test model: d_model 64, 2 layers (Python overhead dominates: the pessimistic case)
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=1024),
}
REPO = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


def build(size: str) -> Any:
    """A random distill of the given size, loaded as a HookedTransformer (float32, CPU)."""
    from transformer_lens import HookedTransformer

    import r1_plugin  # noqa: F401  (registers the distills)
    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    write_tiny_distill(REPO, seed=0, **SIZES[size])
    return HookedTransformer.from_pretrained_no_processing(REPO, device="cpu", dtype=torch.float32)


class GateTimer:
    """Accumulates the time spent in `_SteerHook.mask` (gate decision + position tracking)."""

    def __init__(self) -> None:
        from r1_plugin.steering.steer import _SteerHook

        self.cls = _SteerHook
        self.original = _SteerHook.mask
        self.total = 0.0
        self.calls = 0

    def __enter__(self) -> GateTimer:
        original = self.original

        def timed(hook_self: Any, act: torch.Tensor) -> torch.Tensor:
            t0 = time.process_time()
            out = original(hook_self, act)
            self.total += time.process_time() - t0
            self.calls += 1
            return out

        self.cls.mask = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.cls.mask = self.original  # type: ignore[method-assign]


def main() -> None:
    """Run the benchmark and print a table of tokens/s, overhead ratios and gate cost."""
    from r1_plugin.chat import format_r1_prompt
    from r1_plugin.steering import AfterResponsePrefix, AfterText, Always, FromPosition, steer

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per generate call")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is load-independent)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    for size in args.sizes:
        model = build(size)
        tok = model.tokenizer
        texts = [format_r1_prompt(model, f"Question number {i}: what is {i} plus {i}?") for i in range(args.batch)]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        width = max(map(len, ids))
        tokens = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i in ids])
        hook = f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
        vec = torch.randn(model.cfg.d_model)
        gen = dict(max_new_tokens=args.tokens, do_sample=False, use_past_kv_cache=True, verbose=False,
                   padding_side="left", stop_at_eos=False)
        variants: dict[str, Callable[[], Any]] = {
            "none": lambda: None,
            "Always": Always,
            "FromPosition": lambda start=width + 4: FromPosition(start),
            "AfterResponsePrefix": lambda: AfterResponsePrefix(max_tokens=8),
            "AfterText(never)": lambda: AfterText("this text never appears"),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        gate_cost: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            model.generate(tokens, **gen)  # warm-up
            for _ in range(args.repeats):
                for name, make_gate in variants.items():
                    gate = make_gate()
                    t0 = time.process_time()
                    if gate is None:
                        model.generate(tokens, **gen)
                        times[name].append(time.process_time() - t0)
                        continue
                    with GateTimer() as timer, steer(model, hook, vec, 0.5, gate, warn_never_opened=False):
                        t0 = time.process_time()
                        model.generate(tokens, **gen)
                        times[name].append(time.process_time() - t0)
                    gate_cost[name].append(timer.total / args.tokens)
        base = statistics.median(times["none"])
        n_tok = args.tokens * args.batch
        print(f"\n== {size}: d_model {model.cfg.d_model}, {model.cfg.n_layers} layers, batch {args.batch}, "
              f"{args.tokens} new tokens, prompt {width}, {torch.get_num_threads()} threads, median of "
              f"{args.repeats}")
        print(f"{'variant':22s} {'tokens/s':>10s} {'vs none':>9s} {'gate us/step':>13s}")
        for name in variants:
            med = statistics.median(times[name])
            cost = f"{statistics.median(gate_cost[name]) * 1e6:13.1f}" if gate_cost[name] else f"{'-':>13s}"
            print(f"{name:22s} {n_tok / med:10.1f} {med / base - 1:+9.2%} {cost}")


if __name__ == "__main__":
    main()
