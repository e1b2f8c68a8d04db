"""`r1-plugin features search|show|download|merge`: Goodfire's R1 feature databases (or harvested ones).

    r1-plugin features search "backtracking" --db-dir ~/r1-features/logic
    r1-plugin features show 15204 --labels autointerp.db --activations logic-1.ddb [--html out.html]
    r1-plugin features download logic --sample 1 --dest ~/r1-features
    r1-plugin features harvest --model <name> --sae-release <r> --sae-id <id> --prompts p.txt --out harvest_out/
    r1-plugin features merge harvest_out/ -o my-sae.ddb

`--db-dir` (or $R1_FEATURES_DB_DIR) is a folder with `autointerp.db` (or `.csv`) and one `*.ddb`, as
`features download` lays them out; `--labels` / `--activations` name the files directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from r1_plugin.errors import R1PluginError

DB_DIR_ENV = "R1_FEATURES_DB_DIR"
LABEL_NAMES = ("autointerp.db", "autointerp.duckdb", "autointerp.sqlite", "autointerp.csv")
_WANDB_FLAGS = ("wandb_project", "wandb_mode", "wandb_dir", "wandb_name", "wandb_tags")


def _add_db_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels", type=Path, help="labels file: autointerp.db (SQLite or DuckDB) or autointerp.csv"
    )
    parser.add_argument("--activations", type=Path, help="activations DuckDB file (<sae>[-1|-10|-0-1].ddb)")
    parser.add_argument(
        "--db-dir", type=Path, help=f"folder holding autointerp.db and one .ddb (default: ${DB_DIR_ENV})"
    )


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    """The shared W&B flags, if r1_plugin.tracking is available."""
    try:
        from r1_plugin.tracking import add_tracking_args
    except ImportError:  # pragma: no cover - tracking is part of the package
        return
    add_tracking_args(parser)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `features` with its actions: search, show, download, merge, harvest."""
    parser = subparsers.add_parser("features", help="search feature labels and show max-activating examples")
    actions = parser.add_subparsers(dest="features_command", metavar="ACTION")
    actions.required = True

    search = actions.add_parser("search", help="features whose label contains all the words, best first")
    search.add_argument("text", help='words to look for, e.g. "backtracking"')
    search.add_argument("--limit", type=int, default=20, help="at most this many results (default 20)")
    search.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _add_db_args(search)
    _add_tracking(search)

    show = actions.add_parser("show", help="a feature's label and its strongest activating examples")
    show.add_argument("feature_id", type=int)
    show.add_argument("-k", type=int, default=10, help="examples to show (default 10)")
    show.add_argument("--context", type=int, default=8, help="tokens either side (default 8)")
    show.add_argument("--html", type=Path, help="also write the examples as an HTML page to this file")
    show.add_argument(
        "--no-color", action="store_true", help="mark the token with <<...>> instead of ANSI colour"
    )
    _add_db_args(show)
    _add_tracking(show)

    dl = actions.add_parser("download", help="fetch Goodfire's labels and an activations sample (resumable)")
    dl.add_argument("sae", choices=("math", "logic"))
    dl.add_argument("--sample", choices=("0.1", "1", "10", "full"), default="0.1", help="percent of tokens")
    dl.add_argument("--dest", type=Path, default=Path("."), help="files go to DEST/<sae>/ (default .)")
    dl.add_argument("--labels-only", action="store_true", help="only autointerp.db")
    dl.add_argument("--csv", action="store_true", help="labels as autointerp.csv instead of autointerp.db")
    dl.add_argument("--base-url", help="bucket URL (default: $R1_FEATURES_BASE_URL or Goodfire's S3 bucket)")
    dl.add_argument("--yes", action="store_true", help="do not ask before a download over 10 GB")

    merge = actions.add_parser("merge", help="merge harvest shards into one .ddb in Goodfire's schema")
    merge.add_argument("shards", nargs="+", type=Path, help="shard directories, or one harvest output folder")
    merge.add_argument("-o", "--output", type=Path, required=True, help="the .ddb to write")
    merge.add_argument(
        "--top-k", type=int, help="keep this many activations per feature (default: harvest's)"
    )
    merge.add_argument("--labels", type=Path, help="copy labels from this autointerp file")
    merge.add_argument("--overwrite", action="store_true")

    from r1_plugin.cli._harvest import add_harvest_parser  # `features harvest`: loads a model (shared flags)

    add_harvest_parser(actions)
    return parser


def resolve_paths(
    labels: Path | None, activations: Path | None, db_dir: Path | None
) -> tuple[Path | None, Path | None]:
    """The labels and activations files from explicit paths, else from --db-dir / $R1_FEATURES_DB_DIR."""
    if db_dir is None and labels is None and activations is None and os.environ.get(DB_DIR_ENV):
        db_dir = Path(os.environ[DB_DIR_ENV])
    if db_dir is not None:
        db_dir = db_dir.expanduser()
        if not db_dir.is_dir():
            raise R1PluginError(f"--db-dir {db_dir} is not a folder")
        if labels is None:
            labels = next((db_dir / n for n in LABEL_NAMES if (db_dir / n).is_file()), None)
        if activations is None:
            found = sorted(db_dir.glob("*.ddb"))
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise R1PluginError(
                    f"{db_dir} holds several .ddb files ({names}); pick one with --activations"
                )
            activations = found[0] if found else None
        if labels is None and activations is None:
            raise R1PluginError(f"{db_dir} has neither {' / '.join(LABEL_NAMES)} nor a .ddb file")
    if labels is None and activations is None:
        raise R1PluginError(
            f"no database given: pass --db-dir (or set ${DB_DIR_ENV}), or --labels and/or --activations; "
            "`r1-plugin features download logic --sample 0.1` fetches Goodfire's"
        )
    return labels, activations


def _tracker(args: argparse.Namespace, config: dict[str, Any]) -> Any | None:
    """A W&B run only when a W&B flag was given: a lookup is not an experiment unless asked to be."""
    if getattr(args, "no_wandb", False) or not any(getattr(args, f, None) for f in _WANDB_FLAGS):
        return None
    from r1_plugin.tracking import tracker_from_args

    return tracker_from_args(args, "features", config)


def _search(args: argparse.Namespace) -> int:
    from r1_plugin.features import FeatureDB

    labels, activations = resolve_paths(args.labels, args.activations, args.db_dir)
    with FeatureDB(labels=labels, activations=activations) as db:
        hits = db.search(args.text, limit=args.limit)
    rows = [
        {
            "feature_id": h.feature_id,
            "label": h.label,
            "quality": h.quality,
            "interestingness": h.interestingness,
        }
        for h in hits
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print(f"no feature label contains {args.text!r}")
    else:
        from r1_plugin.features.render import visible

        print(f"{'feature':>8}  {'quality':>7}  {'interest':>8}  label")
        for row in rows:
            q = "-" if row["quality"] is None else f"{row['quality']:.2f}"
            i = "-" if row["interestingness"] is None else f"{row['interestingness']:.2f}"
            print(f"{row['feature_id']:>8}  {q:>7}  {i:>8}  {visible(row['label'])}")
    tracker = _tracker(args, {"action": "search", "text": args.text, "limit": args.limit})
    if tracker is not None:
        with tracker:
            tracker.log_table(
                "search_results", rows, columns=["feature_id", "label", "quality", "interestingness"]
            )
    return 0


def _show(args: argparse.Namespace) -> int:
    from r1_plugin.features import FeatureDB
    from r1_plugin.features.db import UnknownFeatureError
    from r1_plugin.features.render import render_html, render_terminal

    labels, activations = resolve_paths(args.labels, args.activations, args.db_dir)
    with FeatureDB(labels=labels, activations=activations) as db:
        label = None
        if db.n_labels:
            try:
                label = db.label(args.feature_id)
            except UnknownFeatureError:
                label = "(no label)"
        examples = db.top_examples(args.feature_id, k=args.k, context=args.context) if activations else []
    color = not args.no_color and sys.stdout.isatty()
    print(render_terminal(examples, args.feature_id, label, color=color))
    if args.html:
        args.html.write_text(render_html(examples, args.feature_id, label, full_page=True), encoding="utf-8")
        print(f"wrote {args.html}")
    tracker = _tracker(
        args, {"action": "show", "feature_id": args.feature_id, "k": args.k, "context": args.context}
    )
    if tracker is not None:
        rows = [
            {
                "sequence_id": e.sequence_id,
                "token_idx": e.token_idx,
                "strength": e.strength,
                "token": e.token,
                "before": e.before,
                "after": e.after,
            }
            for e in examples
        ]
        with tracker:
            tracker.log_summary({"feature_id": args.feature_id, "label": label})
            if rows:
                tracker.log_table("top_examples", rows)
    return 0


def _download(args: argparse.Namespace) -> int:
    from r1_plugin.features.download import download

    paths = download(
        args.sae, args.sample, args.dest, activations=not args.labels_only,
        labels_format="csv" if args.csv else "db", base=args.base_url, yes=args.yes,
    )  # fmt: skip
    for path in paths:
        print(path)
    print(f"r1-plugin features search <words> --db-dir {paths[0].parent}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from r1_plugin.features import merge_shards

    shards: Any = args.shards[0] if len(args.shards) == 1 else args.shards
    out = merge_shards(shards, args.output, labels=args.labels, top_k=args.top_k, overwrite=args.overwrite)
    print(out)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    from r1_plugin.cli._harvest import run_harvest

    action = {"search": _search, "show": _show, "download": _download, "merge": _merge,
              "harvest": run_harvest}[args.features_command]
    return action(args)
