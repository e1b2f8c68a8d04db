"""`r1-plugin sinks`: attention sinks and massive activations of a model on a prompt, with R1's prefix-end check."""

from __future__ import annotations

import argparse
from typing import Any


def add_threshold_args(parser: argparse.ArgumentParser, chunk_size: bool = True) -> None:
    """The SinkThresholds flags, each checked by SinkThresholds' own checker (r1_plugin/sinks/thresholds.py)."""
    from r1_plugin.cli._values import checked
    from r1_plugin.sinks import thresholds as th

    group = parser.add_argument_group("thresholds (r1_plugin.sinks.SinkThresholds)")
    group.add_argument("--epsilon", type=checked(float, th.check_epsilon), default=th.DEFAULT_EPSILON,
                       help="alpha threshold in [0, 1] (Gu et al.; default %(default)s)")
    group.add_argument("--min-sink-rate", type=checked(float, th.check_min_sink_rate), default=th.DEFAULT_MIN_SINK_RATE,
                       help="share of (layer, head) pairs a sink needs, in [0, 1] (default %(default)s)")
    group.add_argument("--min-queries", type=checked(int, th.check_min_queries), default=th.DEFAULT_MIN_QUERIES,
                       help="queries a sink needs at or after it (default %(default)s)")
    group.add_argument("--min-value", type=checked(float, th.check_min_value), default=th.DEFAULT_MIN_VALUE,
                       help="massive: |value| above this (default %(default)s)")
    group.add_argument("--min-ratio", type=checked(float, th.check_min_ratio), default=th.DEFAULT_MIN_RATIO,
                       help="massive: at least this many times the layer median (default %(default)s)")
    if chunk_size:
        group.add_argument("--chunk-size", type=checked(int, th.check_chunk_size), default=th.DEFAULT_CHUNK_SIZE,
                           help="queries per forward chunk (default %(default)s)")


def thresholds_from_args(args: argparse.Namespace) -> Any:
    """The SinkThresholds the flags give."""
    from r1_plugin.sinks import SinkThresholds

    names = ("epsilon", "min_sink_rate", "min_queries", "min_value", "min_ratio", "chunk_size")
    return SinkThresholds(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `sinks` subcommand."""
    from r1_plugin.cli._model_args import add_model_args
    from r1_plugin.cli._values import count, out_dir
    from r1_plugin.sinks.r1 import DEFAULT_MAX_NEW_TOKENS
    from r1_plugin.tracking import add_tracking_args

    parser = subparsers.add_parser(
        "sinks",
        help="find attention sinks / massive activations; check R1's response-prefix-end sink",
        description=(
            "By default --prompt is a user message: it is put in R1's chat format, the model writes its response "
            "prefix (KV-cached, tracked) and the command reports whether the token ending that prefix is an "
            "attention sink, next to BOS and the other sinks. With --raw the text is scanned as it is."
        ),
    )
    parser.add_argument("--prompt", required=True, help="user message (default) or, with --raw, the exact text")
    parser.add_argument("--raw", action="store_true", help="scan the text as is (TransformerLens BOS rule)")
    parser.add_argument(
        "--max-new-tokens", type=count(at_least=0), default=DEFAULT_MAX_NEW_TOKENS,
        help="tokens to generate for the R1 check when the prefix is not complete yet",
    )
    add_threshold_args(parser)
    parser.add_argument("--out", type=out_dir, default=None, help="folder for positions.csv, massive.csv, heatmaps")
    add_model_args(parser, sae=False)
    add_tracking_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, scan (or run the R1 check), print a summary, write files and log to W&B."""
    from dataclasses import asdict

    from r1_plugin.chat import THINK_OPEN, format_r1_prompt
    from r1_plugin.cli._errors import check_tracking_args
    from r1_plugin.cli._model_args import load_model_from_args
    from r1_plugin.cli._values import make_out_dir
    from r1_plugin.sinks import check_response_prefix_sink, log_sinks, scan_sinks
    from r1_plugin.tracking import tracker_from_args

    check_tracking_args(args)  # a bad W&B mode fails before the model loads
    thresholds = thresholds_from_args(args)
    if args.out is not None:
        make_out_dir(args.out)  # an output folder that cannot be made fails before the model loads
    model = load_model_from_args(args)  # unprocessed: the residual stream stays what the model computes
    check = None
    if args.raw:
        result = scan_sinks(model, args.prompt, thresholds=thresholds, batched=False)
        assert result.sinks is not None
        report, massive = result.sinks, result.massive
    else:
        text = args.prompt if THINK_OPEN in args.prompt else format_r1_prompt(model, args.prompt)
        check = check_response_prefix_sink(model, text, max_new_tokens=args.max_new_tokens, thresholds=thresholds)
        report, massive = check.report, check.massive
        print(check.summary())
    print(report.summary())
    if massive is not None:
        print(massive.summary())

    if args.out is not None:
        (check.to_dataframe() if check is not None else report.to_dataframe()).to_csv(
            args.out / "positions.csv", index=False
        )
        if massive is not None:
            massive.to_dataframe().to_csv(args.out / "massive.csv", index=False)
        for suffix in ("png", "html"):
            path = args.out / f"heatmap.{suffix}"
            if check is not None:
                check.save_heatmap(path)
            else:
                report.save_heatmap(path)
        print(f"wrote positions.csv, massive.csv, heatmap.png, heatmap.html to {args.out}")

    config = {"model": args.model, "prompt": args.prompt, "raw": args.raw, **asdict(thresholds)}
    with tracker_from_args(args, "sinks", config) as tracker:
        log_sinks(tracker, report, massive, check)
    return 0
