"""Harvest memory and time against prompt length (#20 item 7): one prompt of 1k, 2k, 4k and 16k tokens, the forward
in query chunks over the KV cache (`chunk_size=512`, the default) against one full forward (`chunk_size=None`,
the old behaviour, run only where it fits in memory), in the same run.

Run by hand: `PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_harvest_memory.py [--lengths 1024 4096 16384]`;
results go to docs/benchmarks.md. Each measurement runs in a fresh subprocess: a tiny random Qwen distill with a
16k context and a 2,048-feature SAE, a warm-up harvest of a short prompt, then the peak RSS is reset
(/proc/self/clear_refs) and one prompt of the given length is harvested; reported: the peak RSS above the
resident set before it, and the wall time. The last line compares the chunked and unchunked activations at 4k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
CTX = 16_384

CHILD = """
import json, os, sys, tempfile, time
from pathlib import Path
import torch
from sae_lens import StandardSAEConfig
from sae_lens.saes.standard_sae import StandardSAE
from transformer_lens import HookedTransformer
from r1_plugin.features import harvest
from r1_plugin.drive import driver
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

mode, length, chunk = sys.argv[1], int(sys.argv[2]), None if sys.argv[3] == "none" else int(sys.argv[3])
write_tiny_distill(MODEL, max_position_embeddings=CTX)
model = HookedTransformer.from_pretrained_no_processing(MODEL, device="cpu", n_ctx=CTX)
cfg = StandardSAEConfig(d_in=model.cfg.d_model, d_sae=2048, apply_b_dec_to_input=False)
cfg.metadata.hook_name = "blocks.1.hook_resid_post"
sae = StandardSAE(cfg).eval()
gen = torch.Generator().manual_seed(0)
prompt = torch.randint(3, 300, (length,), generator=gen).tolist()

def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

if mode == "diff":
    tokens, mask = torch.tensor([prompt]), torch.ones(1, length, dtype=torch.long)
    with torch.inference_mode():
        a = driver(model).hook_activations(tokens, mask, "blocks.1.hook_resid_post", None)
        b = driver(model).hook_activations(tokens, mask, "blocks.1.hook_resid_post", 512)
    print(json.dumps({"max_abs_diff": float((a - b).abs().max()), "max_abs": float(a.abs().max()),
                      "bit_equal": bool(torch.equal(a, b))}))
    sys.exit(0)
with tempfile.TemporaryDirectory() as tmp:
    harvest(model, sae, [prompt[:64]], Path(tmp) / "warm", top_k=8, max_length=length, chunk_size=chunk,
            progress=False)
    Path("/proc/self/clear_refs").write_text("5")
    before = status()
    t0 = time.perf_counter()
    harvest(model, sae, [prompt], Path(tmp) / "run", top_k=8, max_length=length, chunk_size=chunk, progress=False)
    seconds = time.perf_counter() - t0
    after = status()
print(json.dumps({"length": length, "chunk": chunk, "peak_growth_mib": (after["VmHWM"] - before["VmRSS"]) / 2**20,
                  "seconds": seconds}))
""".replace("MODEL", repr(QWEN)).replace("CTX", str(CTX))


def run(*args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("HF_HUB_CACHE", str(Path(tempfile.gettempdir()) / "bench_harvest_hf"))
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 16384])
    parser.add_argument("--unchunked-up-to", type=int, default=4096,
                        help="run the one-forward baseline only up to this length (16k needs tens of GiB)")
    args = parser.parse_args()
    print(f"{'tokens':>7} {'chunked (512) MiB':>18} {'s':>7} {'one forward MiB':>16} {'s':>7} {'ratio':>6}")
    for length in args.lengths:
        chunked = run("harvest", str(length), "512")
        whole = run("harvest", str(length), "none") if length <= args.unchunked_up_to else None
        cell = (f"{whole['peak_growth_mib']:16.0f} {whole['seconds']:7.2f} "
                f"{whole['peak_growth_mib'] / max(chunked['peak_growth_mib'], 1e-9):6.1f}"
                if whole and "error" not in whole else f"{'(not run)' if whole is None else whole['error']:>31}")
        print(f"{length:7d} {chunked.get('peak_growth_mib', float('nan')):18.0f} {chunked.get('seconds', float('nan')):7.2f} "
              f"{cell}", flush=True)
    print("activations at 4,096 tokens, chunked vs one forward:", run("diff", "4096", "512"))


if __name__ == "__main__":
    main()
