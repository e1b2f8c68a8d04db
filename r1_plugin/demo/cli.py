"""The demo's command line (`python -m r1_plugin.demo`): its options, the DemoConfig they make, and the entry point."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from r1_plugin.demo import assets
from r1_plugin.demo.config import (
    DEFAULT_FEATURE,
    DEFAULT_OUT,
    DEFAULT_STRENGTH_FACTOR,
    DemoConfig,
    DemoResult,
)
from r1_plugin.demo.synthetic import demo_questions

RunDemo = Callable[[DemoConfig], DemoResult]

def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line options (the model flags are r1-plugin's own: r1_plugin/cli/_model_args.py)."""
    from r1_plugin.cli._errors import CLIParser
    from r1_plugin.cli._model_args import add_model_args
    from r1_plugin.cli._values import count, finite_float, in_file, out_dir

    p = CLIParser(
        prog="python -m r1_plugin.demo",
        description="Steer an SAE feature of R1 after its response prefix, look at the prefix-end attention sinks, "
        "log to W&B. Defaults: the embedded tiny R1, offline, on the CPU in float32.",
    )
    add_model_args(p, model_default=str(assets.MODEL_DIR))
    p.set_defaults(device="cpu", dtype="float32")  # the demo's defaults: the tiny R1 on the CPU, in float32
    for flag, text in (("--device", "torch device, e.g. cuda:0 (default: cpu)"),
                       ("--dtype", "weights and activations dtype (default: float32)")):
        p._option_string_actions[flag].help = text  # the same flag, with the demo's default
    p.add_argument("--sae-release", default=None,
                   help="SAELens release (default: the embedded tiny R1's SAE, loaded from the package folder)")
    p.add_argument("--sae-id", default=assets.SAE_ID, help="SAE id within the release (default: %(default)s)")
    p.add_argument("--feature", default=DEFAULT_FEATURE,
                   help="feature id, or words to search the labels for (default: %(default)s)")
    p.add_argument("--strength", type=finite_float, default=None,
                   help=f"steering strength (default: {DEFAULT_STRENGTH_FACTOR} x the feature's top activation)")
    p.add_argument("--prompt", action="append", default=None, help="user prompt (repeatable; default: 4 questions)")
    p.add_argument("--max-new-tokens", type=count(), default=120)
    p.add_argument("--features-labels", type=in_file, default=None, help="autointerp.db/.csv of the SAE")
    p.add_argument("--features-activations", type=in_file, default=None, help="<sae>.ddb activations file")
    p.add_argument("--no-sweep", action="store_true", help="skip the strength sweep")
    p.add_argument("--no-experiments", action="store_true", help="skip the four findings experiments")
    p.add_argument("--out", type=out_dir, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    p.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), default="offline")
    p.add_argument("--wandb-dir", type=Path, default=None, help="W&B folder (default: $WANDB_DIR, else --out)")
    p.add_argument("--seed", type=count(at_least=0), default=0)
    return p


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """A DemoConfig from parsed options."""
    from r1_plugin.cli._model_args import ModelArgsError

    for flag in ("sae_dtype", "memory_per_device"):
        if getattr(args, flag, None) is not None:
            raise ModelArgsError(f"the demo does not take --{flag.replace('_', '-')} (it runs with the model's dtype "
                                 "and each device's total memory)")
    return DemoConfig(
        model=args.model,
        sae_release=args.sae_release,
        sae_id=args.sae_id,
        feature=str(args.feature),
        strength=args.strength,
        prompts=args.prompt or list(demo_questions()),
        device=args.device,
        dtype=args.dtype,
        first_n_layers=args.first_n_layers,
        n_devices=args.n_devices or 1,
        keep_fp8=args.keep_fp8,
        sae_device=args.sae_device,
        out=args.out,
        max_new_tokens=args.max_new_tokens,
        features_labels=args.features_labels,
        features_activations=args.features_activations,
        sweep=not args.no_sweep,
        experiments=not args.no_experiments,
        wandb_mode=args.wandb_mode,
        wandb_dir=args.wandb_dir,
        seed=args.seed,
        backend=args.backend,
    )


def main(argv: Sequence[str] | None, run_demo: RunDemo) -> int:
    """Entry point of `python -m r1_plugin.demo` (`r1_plugin.demo.run.main` passes its `run_demo`): any failure is
    one line on stderr and exit code 2."""
    from r1_plugin.cli import debug
    from r1_plugin.cli._errors import report_failure

    prog = "python -m r1_plugin.demo"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed on one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from r1_plugin.cli._model_args import check_device

        check_device(args.device, "--device", args.n_devices or 1)  # a device this machine lacks: before any load
        check_device(args.sae_device, "--sae-device")
        result = run_demo(config_from_args(args))
    except Exception as exc:
        if debug():
            raise
        return report_failure(prog, exc, args)
    print()
    print(result.report)
    return 0
