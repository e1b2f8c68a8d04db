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
    from r1_plugin.cli._model_args import DeprecatedAlias, add_model_args, memory_size
    from r1_plugin.cli._values import count

    plan.add_argument("model", help="e.g. deepseek-ai/DeepSeek-R1, r1, a checkpoint folder or a config.json")
    add_model_args(plan, model=False, sae=False, device=False)  # the loading flags, as every command has them
    plan.add_argument("--memory", type=memory_size, dest="memory_per_device", action=DeprecatedAlias,
                      new="--memory-per-device", help="deprecated spelling of --memory-per-device")
    plan.add_argument("--kv-cache-tokens", type=count(at_least=0), default=0,
                      help="tokens of latent KV cache per sequence")
    plan.add_argument("--batch", type=count(), default=1, help="sequences in the KV cache / forward")
    if "--backend" not in plan._option_string_actions:  # until the shared model flags carry --backend
        plan.add_argument("--backend", default="hooked", choices=["hooked", "bridge"],
                          help="size r1_plugin's HookedTransformer (latent KV cache, default) or TransformerBridge "
                               "(transformers' layout, per-head K/V cache: 71x the latent for R1)")
    return parser


def run(args: argparse.Namespace) -> int:
    """List models, or print a device plan (0: fits, 1: does not fit)."""
    if getattr(args, "models_action", None) == "plan":
        return run_plan(args)
    from r1_plugin.models.model_names import ALL_MODELS

    for spec in ALL_MODELS:
        print(f"{spec.hf_id:45s} {spec.architecture:24s} {', '.join(spec.aliases)}")
    return 0


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan table (and what would fit when it does not)."""
    from pathlib import Path

    from r1_plugin.cli._model_args import model_kwargs_from_args
    from r1_plugin.models.device_plan import plan_devices

    if args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().exists():
        raise PlanCLIError(f"{args.model} does not exist: give a checkpoint folder, a config.json or a hub id")
    if args.memory_per_device is None:
        raise PlanCLIError("--memory-per-device is required: the memory of each device, e.g. 141GB or 80GiB")
    kwargs = model_kwargs_from_args(args)  # the loading flags given, as from_pretrained would get them
    n_devices = kwargs.pop("n_devices", 1)
    memory = kwargs.pop("memory_per_device")
    backend = kwargs.pop("backend", None) or getattr(args, "backend", None)
    if backend is not None:
        kwargs["backend"] = backend
    try:
        plan = plan_devices(
            args.model, n_devices, memory, kv_cache_tokens=args.kv_cache_tokens, batch=args.batch, **kwargs
        )
    except R1PluginError:
        raise
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        raise PlanCLIError(f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)) from exc
    print(plan.table())
    return 0 if plan.fits else 1

