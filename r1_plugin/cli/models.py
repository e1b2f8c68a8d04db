"""`r1-plugin models`: list the models r1_plugin registers; `r1-plugin models plan`: size a DeepSeek-V3/R1 model
over devices from its config.json (no torch import, no weights read)."""

from __future__ import annotations

import argparse
from typing import Any

from r1_plugin.errors import R1PluginError


class PlanCLIError(R1PluginError, ValueError):
    """Bad `models plan` arguments (memory size, layer count, config), reported as a one-line CLI error."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `models` subcommand and its `plan` action."""
    parser = subparsers.add_parser("models", help="list the R1 models r1_plugin registers; `models plan` sizes one")
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    plan = actions.add_parser(
        "plan",
        help="bytes per device for a DeepSeek-V3/R1 model (byte-balanced blocks) and whether it fits",
        description="Plan a DeepSeek-V3/R1 model over devices from config.json alone (a hub id/alias in the HF "
        "cache, a checkpoint folder or a config.json path). Exit status 0 when it fits, 1 when it does not.",
    )
    plan.add_argument("model", help="e.g. deepseek-ai/DeepSeek-R1, r1, a checkpoint folder or a config.json")
    plan.add_argument("--n-devices", type=int, default=1, help="number of devices (default 1)")
    plan.add_argument("--memory", required=True, help="memory per device: bytes, or e.g. 141GB, 80GiB")
    plan.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    plan.add_argument("--keep-fp8", action="store_true", help="keep the checkpoint's FP8 weights FP8 (keep_fp8=True)")
    plan.add_argument("--first-n-layers", type=int, default=None, help="load only the first N layers")
    plan.add_argument("--kv-cache-tokens", type=int, default=0, help="tokens of latent KV cache per sequence")
    plan.add_argument("--batch", type=int, default=1, help="sequences in the KV cache / forward")
    plan.add_argument("--backend", default="hooked", choices=["hooked", "bridge"],
                      help="size r1_plugin's HookedTransformer (latent KV cache, default) or TransformerBridge "
                           "(transformers' layout, per-head K/V cache: 71x the latent for R1)")
    return parser


def run(args: argparse.Namespace) -> int:
    """List models, or print a device plan (0: fits, 1: does not fit)."""
    if getattr(args, "models_action", None) == "plan":
        return run_plan(args)
    from r1_plugin import list_models

    for spec in list_models():
        print(f"{spec.hf_id:45s} {spec.architecture:24s} {', '.join(spec.aliases)}")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan table (and what would fit when it does not)."""
    from r1_plugin.models.device_plan import plan_devices

    try:
        plan = plan_devices(
            args.model, args.n_devices, args.memory, dtype=args.dtype, keep_fp8=args.keep_fp8,
            first_n_layers=args.first_n_layers, kv_cache_tokens=args.kv_cache_tokens, batch=args.batch,
            backend=args.backend,
        )
    except R1PluginError:
        raise
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        raise PlanCLIError(f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)) from exc
    print(plan.table())
    return 0 if plan.fits else 1

