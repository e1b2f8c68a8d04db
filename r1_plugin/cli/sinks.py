"""`r1-plugin sinks`: attention sinks and massive activations of a model on a prompt, with R1's prefix-end check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `sinks` subcommand."""
    from r1_plugin.cli._model_args import add_model_args
    from r1_plugin.sinks.detect import (
        DEFAULT_CHUNK_SIZE,
        DEFAULT_EPSILON,
        DEFAULT_MIN_QUERIES,
        DEFAULT_MIN_RATIO,
        DEFAULT_MIN_SINK_RATE,
        DEFAULT_MIN_VALUE,
    )
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
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
        help="tokens to generate for the R1 check when the prefix is not complete yet",
    )
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON, help="alpha threshold (Gu et al.)")
    parser.add_argument("--min-sink-rate", type=float, default=DEFAULT_MIN_SINK_RATE, help="sink_rate to be a sink")
    parser.add_argument("--min-queries", type=int, default=DEFAULT_MIN_QUERIES, help="queries a sink needs after it")
    parser.add_argument("--min-value", type=float, default=DEFAULT_MIN_VALUE, help="massive: |value| above this")
    parser.add_argument("--min-ratio", type=float, default=DEFAULT_MIN_RATIO, help="massive: times the median")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="queries per forward chunk")
    parser.add_argument("--out", type=Path, default=None, help="folder for positions.csv, massive.csv, heatmaps")
    add_model_args(parser, sae=False)
    add_tracking_args(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, scan (or run the R1 check), print a summary, write files and log to W&B."""
    from r1_plugin.chat import THINK_OPEN, format_r1_prompt
    from r1_plugin.cli._errors import check_tracking_args
    from r1_plugin.cli._model_args import load_model_from_args
    from r1_plugin.sinks import check_response_prefix_sink, log_sinks, scan_sinks
    from r1_plugin.tracking import tracker_from_args

    check_tracking_args(args)  # a bad W&B mode fails before the model loads
    model = load_model_from_args(args)  # unprocessed: the residual stream stays what the model computes
    thresholds = dict(
        epsilon=args.epsilon,
        min_sink_rate=args.min_sink_rate,
        min_queries=args.min_queries,
        min_value=args.min_value,
        min_ratio=args.min_ratio,
        chunk_size=args.chunk_size,
    )
    check = None
    if args.raw:
        result = scan_sinks(model, args.prompt, batched=False, **thresholds)
        assert result.sinks is not None
        report, massive = result.sinks, result.massive
    else:
        text = args.prompt if THINK_OPEN in args.prompt else format_r1_prompt(model, args.prompt)
        check = check_response_prefix_sink(model, text, max_new_tokens=args.max_new_tokens, **thresholds)
        report, massive = check.report, check.massive
        print(check.summary())
    print(report.summary())
    if massive is not None:
        print(massive.summary())

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
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

    config = {"model": args.model, "prompt": args.prompt, "raw": args.raw, **thresholds}
    with tracker_from_args(args, "sinks", config) as tracker:
        log_sinks(tracker, report, massive, check)
    return 0
