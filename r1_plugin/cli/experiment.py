"""`r1-plugin experiment NAME`: Goodfire's R1 findings as one command each, writing report.md, results.json and a
PNG into --out (and a W&B run unless --no-wandb).

    r1-plugin experiment prefix-gating --model deepseek-ai/DeepSeek-R1 --dtype bfloat16 --device cuda \\
        --n-devices 16 --sae-release goodfire-deepseek-r1-logic --sae-id layer_37 --feature 1234 --strength 8 \\
        --prompt "What is 7 times 8?" --target-text Wait --out out/prefix
    r1-plugin experiment oversteer ... --strengths 0,2,4,8,16,32
    r1-plugin experiment segments --model ... --sae-release ... --sae-id ... --prompt ... --out out/segments
    r1-plugin experiment sinks --model ... --prompt ... --out out/sinks

See docs/findings.md for the metrics and what each result would mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError

EXPERIMENTS: dict[str, str] = {
    "prefix-gating": "the same feature and strength under four gates (first response token, inside the response "
                     "prefix, after it, thinking only): expression, behaviour, divergence with bootstrap CIs",
    "oversteer": "a strength sweep: target effect, the feature's expression, coherence and the reversion flag",
    "segments": "feature frequency and mean activation per trace segment (prompt, response prefix, thinking, "
                "answer), distinguishing features and Jensen-Shannon divergence",
    "sinks": "attention-sink rate and massive activations at BOS, the response-prefix end and the first thinking "
             "token, with CIs and the per-layer profile",
}


class ExperimentCLIError(R1PluginError, ValueError):
    """A bad combination of `r1-plugin experiment` arguments or an unreadable prompts/direction file."""


def _add_common(parser: argparse.ArgumentParser, generate_default: int) -> None:
    from r1_plugin.cli._values import count, in_file, out_dir

    group = parser.add_argument_group("prompts and output")
    group.add_argument("--prompt", action="append", default=None,
                       help="a user message (put in R1's chat format) or R1 chat text; repeatable")
    group.add_argument("--prompts-file", type=in_file, default=None, help="a text file with one user message per line")
    group.add_argument("--max-new-tokens", type=count(), default=generate_default,
                       help="tokens generated per continuation (default: %(default)s)")
    group.add_argument("--out", type=out_dir, required=True, help="folder for report.md, results.json and the PNG")
    group.add_argument("--n-boot", type=count(), default=1000, help="bootstrap resamples for the CIs (default 1000)")
    group.add_argument("--seed", type=count(at_least=0), default=0, help="seed of the bootstrap (default 0)")


def _add_prefix(parser: argparse.ArgumentParser) -> None:
    from r1_plugin.cli._values import count

    group = parser.add_argument_group("response prefix (r1_plugin.response_prefix.ResponsePrefixSpec)")
    group.add_argument("--prefix-end", choices=("sentence", "newline"), default="sentence",
                       help="the prefix ends at the first sentence end or the first newline (default sentence)")
    group.add_argument("--prefix-max-tokens", type=count(), default=64,
                       help="the prefix ends after at most this many tokens after <think> (default 64)")


def _spec(args: argparse.Namespace) -> Any:
    """The ResponsePrefixSpec of --prefix-end / --prefix-max-tokens."""
    from r1_plugin.response_prefix import ResponsePrefixSpec

    try:
        return ResponsePrefixSpec(end=args.prefix_end, max_tokens=args.prefix_max_tokens)
    except ValueError as exc:
        raise ExperimentCLIError(str(exc)) from exc


def _add_finished(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-generate", action="store_true",
                        help="the prompts are finished R1 traces (chat text with <think>): analyse them as they are")


def _add_sae(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("SAE" if required else "what to steer with (an SAE feature or a direction)")
    from r1_plugin.cli._model_args import add_sae_source_args
    from r1_plugin.cli._values import count

    add_sae_source_args(group, required=required)
    if not required:
        group.add_argument("--feature", type=count(at_least=0), nargs="+", default=None,
                           help="SAE feature id(s) (several are steered and read out together)")
        group.add_argument("--direction", type=Path, default=None,
                           help="saved direction instead of an SAE: .pt (tensor or {'direction', 'hook_name'}) "
                                "or .npy")
        group.add_argument("--hook", default=None, help="hook name (default: the SAE's / the direction file's)")
        group.add_argument("--mode", choices=("add", "clamp", "ablate"), default="add",
                           help="add the decoder row / direction, or clamp/ablate the SAE feature (default add)")
        group.add_argument("--normalize", action="store_true", help="steer with the unit direction")
        group.add_argument("--relative", action="store_true", help="strength as a fraction of the residual norm")
        target = parser.add_argument_group("behavioural target (optional)")
        target.add_argument("--target-text", default=None,
                            help="count this string in the continuation (occurrences per generated token)")
        target.add_argument("--target-tokens", default=None,
                            help="text whose tokens are the target: mean log-prob of the next token being one "
                                 "of them over the generation steps")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `experiment` and its four NAME subcommands."""
    from r1_plugin.cli._model_args import add_model_args
    from r1_plugin.cli._values import count, finite_float, finite_floats, fraction, gate
    from r1_plugin.tracking import add_tracking_args

    parser = subparsers.add_parser(
        "experiment", help="Goodfire's R1 findings as experiments: " + ", ".join(EXPERIMENTS),
        description="Run one of Goodfire's R1 findings as an experiment on any model and SAE. Writes report.md, "
                    "results.json and a PNG into --out and logs a W&B run (offline without an API key). "
                    "`r1-plugin experiment NAME --help` lists NAME's options; docs/findings.md explains the metrics.",
    )
    sub = parser.add_subparsers(dest="experiment", metavar="NAME")
    sub.required = True
    for name, text in EXPERIMENTS.items():
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_model_args(p)
        if name in ("prefix-gating", "oversteer"):
            _add_common(p, 64)
            _add_sae(p, required=False)
            how = p.add_argument_group("steering")
            if name == "prefix-gating":
                how.add_argument("--strength", type=finite_float, default=8.0,
                                 help="steering strength (clamp value with --mode clamp; default 8)")
            else:
                how.add_argument("--strengths", type=finite_floats, default=[0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                                 help="comma-separated strengths (default 0,2,4,8,16,32,64)")
                how.add_argument("--gate", type=gate, default="prefix",
                                 help="prefix[:sentence|newline][:N], thinking[:...], in-prefix[:...], generated, "
                                      "always, pos:N, text:..., regex:..., until:... (default: prefix)")
                how.add_argument("--ngram", type=count(), default=3, help="n of the repeated-n-gram rate (default 3)")
                how.add_argument("--reversion-drop", type=fraction, default=0.5,
                                 help="reverted when the effect falls below (1 - this) x its peak (default 0.5)")
                how.add_argument("--batch-size", type=count(), default=8, help="strengths per batch (default 8)")
        elif name == "segments":
            _add_common(p, 256)
            _add_finished(p)
            _add_sae(p, required=True)
            p.add_argument("--features", type=count(at_least=0), nargs="+", default=None,
                           help="restrict the statistics to these feature ids (default: all)")
            p.add_argument("--top-k", type=count(), default=10, help="distinguishing features per segment (default 10)")
        else:
            from r1_plugin.cli.sinks import add_threshold_args

            _add_common(p, 96)
            _add_finished(p)
            add_threshold_args(p, chunk_size=False)
        if name != "oversteer":  # oversteer's --gate spelling carries its own prefix options
            _add_prefix(p)
        add_tracking_args(p)
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    """--prompt values, then the lines of --prompts-file (blank lines skipped)."""
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        if not args.prompts_file.is_file():
            raise ExperimentCLIError(f"--prompts-file {args.prompts_file} does not exist")
        prompts += [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    if not prompts:
        raise ExperimentCLIError("give at least one --prompt or a --prompts-file")
    return prompts


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and the SAE (None when no --sae-release/--sae-id/--sae-path was given; segments requires one)."""
    from r1_plugin.cli._model_args import load_model_from_args, load_sae_from_args, sae_source

    has_sae_args = hasattr(args, "sae_release")  # sinks takes no SAE
    release, sae_id, path = sae_source(args, required=args.experiment == "segments") if has_sae_args else (None,) * 3
    model = load_model_from_args(args)
    model.eval()
    wanted = release is not None or path is not None
    sae = load_sae_from_args(args, model, release, sae_id, path=path) if wanted else None
    return model, sae


def _steering(args: argparse.Namespace, sae: Any) -> dict[str, Any]:
    """The steering keywords of prefix_gating/oversteer from --feature or --direction."""
    if (sae is None) == (args.direction is None):
        raise ExperimentCLIError("give either --sae-release/--sae-id (or --sae-path) with --feature, or --direction (exactly one)")
    common = dict(mode=args.mode, normalize=args.normalize, relative=args.relative, target_text=args.target_text,
                  target_tokens=args.target_tokens)
    if sae is not None:
        if not args.feature:
            raise ExperimentCLIError("steering by SAE needs --feature")
        feature = args.feature[0] if len(args.feature) == 1 else args.feature
        return dict(sae=sae, feature=feature, hook_name=args.hook, **common)
    from r1_plugin.cli.steer import load_direction

    if args.mode != "add":
        raise ExperimentCLIError(f"--mode {args.mode} works on SAE features: pass an SAE and --feature")
    vec, stored = load_direction(args.direction)
    hook = args.hook or stored
    if hook is None:
        raise ExperimentCLIError(f"{args.direction} has no hook_name: pass --hook (e.g. blocks.12.hook_resid_post)")
    return dict(direction=vec, hook_name=hook, **common)


def run_experiment(args: argparse.Namespace, model: Any, sae: Any, prompts: list[str]) -> Any:
    """Call the experiment function NAME with the parsed options; returns its ExperimentResult."""
    from r1_plugin import experiments

    stats = dict(n_boot=args.n_boot, seed=args.seed)
    name = args.experiment
    if name == "prefix-gating":
        return experiments.prefix_gating(model, prompts, strength=args.strength, max_new_tokens=args.max_new_tokens,
                                         spec=_spec(args), **_steering(args, sae), **stats)
    if name == "oversteer":
        return experiments.oversteer(model, prompts, strengths=args.strengths, gate=args.gate, ngram=args.ngram,
                                     reversion_drop=args.reversion_drop, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, **_steering(args, sae), **stats)
    if name == "segments":
        return experiments.segments(model, prompts, sae=sae, features=args.features, top_k=args.top_k,
                                    max_new_tokens=args.max_new_tokens, generate=not args.no_generate,
                                    spec=_spec(args))
    from r1_plugin.cli.sinks import thresholds_from_args

    th = thresholds_from_args(args)  # checked once, as the library checks it
    return experiments.sink_check(model, prompts, max_new_tokens=args.max_new_tokens, generate=not args.no_generate,
                                  spec=_spec(args), thresholds=th, **stats)


def run(args: argparse.Namespace) -> int:
    """Load, run the experiment, write the files, log to W&B, print the summary."""
    from r1_plugin.cli._values import make_out_dir
    from r1_plugin.tracking import tracker_from_args

    prompts = read_prompts(args)
    has_sae = args.experiment != "sinks" and (args.sae_release is not None or args.sae_path is not None)
    if args.experiment in ("prefix-gating", "oversteer") and has_sae == (args.direction is not None):
        raise ExperimentCLIError("give either --sae-release/--sae-id (or --sae-path) with --feature, or --direction (exactly one)")
    make_out_dir(args.out)  # an output folder that cannot be made fails before the model loads
    model, sae = _load(args)
    try:
        result = run_experiment(args, model, sae, prompts)
    except R1PluginError:
        raise
    except ValueError as exc:  # steer's checks: a feature id, hook or direction shape that is wrong
        raise ExperimentCLIError(str(exc)) from exc
    files = result.save(args.out)
    sae_path = getattr(args, "sae_path", None)
    config = {"model": args.model, "sae_release": getattr(args, "sae_release", None),
              "sae_id": getattr(args, "sae_id", None), "sae_path": None if sae_path is None else str(sae_path),
              "prompts": prompts, **result.config}
    with tracker_from_args(args, f"experiment-{args.experiment}", config) as tracker:
        result.log(tracker)
        if tracker.enabled:
            tracker.log_artifact_file(files["report"], f"{result.name}-report", type="report")
        run_dir = tracker.run_dir
    print(result.to_markdown().split("\n## Per prompt")[0])
    print(f"wrote {', '.join(p.name for p in files.values())} to {args.out}"
          + (f"; W&B run {run_dir}" if run_dir is not None else ""))
    return 0
