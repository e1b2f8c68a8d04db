"""`r1-plugin features harvest`: run a model + SAE over prompts into a feature-database shard (Goodfire's schema).

    r1-plugin features harvest --model deepseek-ai/DeepSeek-R1 --dtype bfloat16 --keep-fp8 --n-devices 8 \\
        --first-n-layers 38 --sae-release goodfire-deepseek-r1-logic --sae-id layer_37 \\
        --prompts traces.jsonl --out harvest_out/ [--shard-index 0 --num-shards 4]
    r1-plugin features merge harvest_out/ -o my-sae.ddb

`--prompts` is a text file with one prompt per line, or a .jsonl file whose lines are strings, objects with a
"text" field, or lists of token ids. Rerunning the same command continues an interrupted shard.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError


class HarvestCLIError(R1PluginError, ValueError):
    """A prompts file or SAE source `r1-plugin features harvest` cannot use."""


def add_harvest_parser(actions: Any) -> argparse.ArgumentParser:
    """Register `features harvest` on the `features` actions."""
    from r1_plugin.cli._model_args import add_model_args, add_sae_source_args, positive_int
    from r1_plugin.cli._values import count, finite_float, in_file, out_dir
    from r1_plugin.tracking import add_tracking_args

    parser = actions.add_parser("harvest", help="run a model + SAE over prompts into a feature DB shard")
    parser.add_argument("--prompts", type=in_file, required=True, help="one prompt per line, or .jsonl")
    parser.add_argument("--out", type=out_dir, required=True, help="harvest folder (shards go to OUT/shard-i-of-n/)")
    src = parser.add_argument_group("the SAE (a SAELens release and id, or an SAE on disk)")
    add_sae_source_args(src, required=True)
    src.add_argument("--hook", default=None, help="hook to read (default: the SAE's)")
    how = parser.add_argument_group("harvest")
    how.add_argument("--top-k", type=positive_int, default=64, help="activations kept per feature (default 64)")
    how.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward (default 8)")
    how.add_argument("--max-length", type=positive_int, default=512, help="tokens per prompt at most (default 512)")
    how.add_argument("--min-strength", type=finite_float, default=0.0,
                     help="keep activations above this, a finite number, as harvest() checks it (default 0)")
    how.add_argument("--shard-index", type=count(at_least=0), default=0, help="this machine's shard (default 0)")
    how.add_argument("--num-shards", type=positive_int, default=1, help="number of shards (default 1)")
    how.add_argument("--checkpoint-every", type=positive_int, default=16, help="batches between checkpoints (default 16)")
    how.add_argument("--chunk-size", type=positive_int, default=512,
                     help="positions per forward chunk: memory linear in prompt length (default 512)")
    how.add_argument("--keep-special", action="store_true",
                     help="also encode BOS and special tokens (default: left out; R1's BOS would dominate)")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(parser)
    add_tracking_args(parser)
    return parser


def read_prompts(path: Path) -> list[str | list[int]]:
    """Prompts from a text file (one per line, blank lines skipped) or a .jsonl file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HarvestCLIError(f"cannot read prompts from {path}: {exc}") from None
    if path.suffix != ".jsonl":
        prompts: list[str | list[int]] = [line for line in lines if line.strip()]
    else:
        prompts = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HarvestCLIError(f"{path}:{n} is not JSON ({exc.msg})") from None
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                item = item["text"]
            if isinstance(item, str) or (isinstance(item, list) and all(isinstance(t, int) for t in item)):
                prompts.append(item)
            else:
                raise HarvestCLIError(
                    f"{path}:{n}: a line must be a string, an object with a \"text\" string, or a list of token ids"
                )
    if not prompts:
        raise HarvestCLIError(f"{path} holds no prompts")
    return prompts


def run_harvest(args: argparse.Namespace) -> int:
    """Load the model and the SAE with the shared flags, harvest one shard, print where it went."""
    from r1_plugin.cli._errors import check_tracking_args
    from r1_plugin.cli._model_args import load_model_from_args, load_sae_before_model, place_sae, sae_source
    from r1_plugin.features import harvest
    from r1_plugin.features.harvester import shard_range
    from r1_plugin.tracking import tracker_from_args

    check_tracking_args(args)  # a bad W&B mode fails before the model loads
    release, sae_id, path = sae_source(args, required=True)
    prompts = read_prompts(args.prompts)
    try:
        shard_range(len(prompts), args.shard_index, args.num_shards)
    except ValueError as exc:
        raise HarvestCLIError(str(exc)) from None
    sae = load_sae_before_model(args, release, sae_id, path, hook_name=args.hook)  # d_in checked before the model
    model = load_model_from_args(args)
    sae = place_sae(args, model, sae, hook_name=args.hook)
    config = dict(model=args.model, sae=path or f"{release}/{sae_id}", n_prompts=len(prompts),
                  top_k=args.top_k, shard_index=args.shard_index, num_shards=args.num_shards)
    kwargs: dict[str, Any] = dict(
        hook_name=args.hook, top_k=args.top_k, batch_size=args.batch_size, max_length=args.max_length,
        min_strength=args.min_strength, exclude_special=not args.keep_special, shard_index=args.shard_index,
        num_shards=args.num_shards,
        checkpoint_every=args.checkpoint_every, chunk_size=args.chunk_size, progress=not args.no_progress,
    )
    with tracker_from_args(args, "features", config) as tracker:
        try:
            result = harvest(model, sae, prompts, args.out, tracker=tracker, **kwargs)
        except ValueError as exc:  # harvest's argument checks (sizes, shard index): bad input
            if isinstance(exc, R1PluginError):
                raise
            raise HarvestCLIError(str(exc)) from exc
    print(f"{result.shard_dir}: {result.prompts} prompts, {result.tokens} tokens harvested now")
    print(f"r1-plugin features merge {args.out} -o harvest.ddb")
    return 0
