"""`r1-plugin features search|show|download|merge|map|harvest`: Goodfire's R1 feature databases (or harvested ones).

    r1-plugin features search "backtracking" --db-dir ~/r1-features/logic
    r1-plugin features show 15204 --labels autointerp.db --activations logic-1.ddb [--html out.html]
    r1-plugin features show 15204 --goodfire logic --sample 1      (read over HTTPS, nothing downloaded)
    r1-plugin features download logic --sample 1 --dest ~/r1-features
    r1-plugin features harvest --model <name> --sae-release <r> --sae-id <id> --prompts p.txt --out harvest_out/
    r1-plugin features merge harvest_out/ -o my-sae.ddb
    r1-plugin features map goodfire-deepseek-r1-logic layer_37 -o map/ --db-dir ~/r1-features/logic

`--db-dir` (or $R1_FEATURES_DB_DIR) is a folder with `autointerp.db` (or `.csv`) and one `*.ddb`, as
`features download` lays them out; `--labels` / `--activations` name the files directly, and may be
https:// or s3:// URLs; `--goodfire SAE --sample S` reads Goodfire's published files in place.
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


def _location(value: str) -> str | Path:
    """A URL (https://, http://, s3://) stays a string; anything else is a local path."""
    return value if value.lower().startswith(("http://", "https://", "s3://")) else Path(value)


def _add_db_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels",
        type=_location,
        help="labels file or URL: autointerp.db (SQLite or DuckDB) or autointerp.csv",
    )
    parser.add_argument(
        "--activations",
        type=_location,
        help="activations DuckDB file or https:// / s3:// URL (<sae>[-1].ddb)",
    )
    parser.add_argument(
        "--db-dir", type=Path, help=f"folder holding autointerp.db and one .ddb (default: ${DB_DIR_ENV})"
    )
    parser.add_argument(
        "--goodfire", choices=("math", "logic"), help="read Goodfire's published database over HTTPS in place"
    )
    parser.add_argument(
        "--sample",
        choices=("0.1", "1", "10", "full"),
        help="with --goodfire: percent of tokens (default full)",
    )
    parser.add_argument("--base-url", help="with --goodfire: the bucket URL (default: $R1_FEATURES_BASE_URL)")


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    """The shared W&B flags, if r1_plugin.tracking is available."""
    try:
        from r1_plugin.tracking import add_tracking_args
    except ImportError:  # pragma: no cover - tracking is part of the package
        return
    add_tracking_args(parser)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `features` with its actions: search, show, download, merge, map, harvest."""
    from r1_plugin.cli._values import count, in_file, out_file

    parser = subparsers.add_parser("features", help="search feature labels and show max-activating examples")
    actions = parser.add_subparsers(dest="features_command", metavar="ACTION")
    actions.required = True

    search = actions.add_parser("search", help="features whose label contains all the words, best first")
    search.add_argument("text", help='words to look for, e.g. "backtracking"')
    search.add_argument("--limit", type=count(), default=20, help="at most this many results (default 20)")
    search.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    _add_db_args(search)
    _add_tracking(search)

    show = actions.add_parser("show", help="a feature's label and its strongest activating examples")
    show.add_argument("feature_id", type=count(at_least=0))
    show.add_argument("-k", type=count(), default=10, help="examples to show (default 10)")
    show.add_argument("--context", type=count(at_least=0), default=8, help="tokens either side (default 8)")
    show.add_argument("--html", type=out_file, help="also write the examples as an HTML page to this file")
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
    dl.add_argument(
        "--stall-timeout", type=float, default=60.0, metavar="SECONDS",
        help="give up when no byte arrives for this long; the .part is kept and a re-run resumes (default 60)",
    )  # fmt: skip
    dl.add_argument(
        "--check-remote", action="store_true",
        help="also ask the server whether finished files changed, and fetch new versions (default: finished "
        "files are verified from their records, offline)",
    )  # fmt: skip

    merge = actions.add_parser("merge", help="merge harvest shards into one .ddb in Goodfire's schema")
    merge.add_argument("shards", nargs="+", type=Path, help="shard directories, or one harvest output folder")
    merge.add_argument("-o", "--output", type=out_file, required=True, help="the .ddb to write")
    merge.add_argument(
        "--top-k", type=count(), help="keep this many activations per feature (default: harvest's)"
    )
    merge.add_argument("--labels", type=in_file, help="copy labels from this autointerp file")
    merge.add_argument("--overwrite", action="store_true")
    _add_map_parser(actions)

    from r1_plugin.cli._harvest import add_harvest_parser  # `features harvest`: loads a model (shared flags)

    add_harvest_parser(actions)
    return parser


def _add_map_parser(actions: Any) -> None:
    """`features map RELEASE SAE_ID -o OUT` (or `--sae-path`): a UMAP of the SAE's decoder as a PNG and an offline
    HTML browser."""
    from r1_plugin.cli._values import count, nonnegative_float, out_dir

    fmap = actions.add_parser(
        "map", help="2-D map of an SAE's features (UMAP of decoder directions): PNG + interactive HTML"
    )
    fmap.add_argument("release", nargs="?", help="SAELens release, e.g. goodfire-deepseek-r1-logic")
    fmap.add_argument("sae_id", nargs="?", help="SAE id within the release, e.g. layer_37")
    fmap.add_argument(
        "--sae-path", type=Path,
        help="instead of RELEASE SAE_ID: an SAE on disk, as steer and harvest take it (a SAELens folder, or a "
        "release folder with sae.yaml such as r1_plugin/assets/tiny-r1-sae, then optionally its SAE id as the one "
        "positional argument), or a Goodfire .pt state dict",
    )  # fmt: skip
    fmap.add_argument("-o", "--out", type=out_dir, required=True, help="output folder (the cache goes inside)")
    fmap.add_argument("--name", default="feature_map", help="file names: NAME.png, NAME.html (default %(default)s)")
    _add_db_args(fmap)
    fmap.add_argument(
        "--stat", action="append", default=[], metavar="NAME=PATH[:COLUMN]",
        help="a per-feature statistic to colour by: .npy/.pt [d_sae], or .csv with feature_id and COLUMN "
        "(numbers: a colour scale, e.g. firing rate; text: categories, e.g. a segment); repeatable",
    )  # fmt: skip
    fmap.add_argument("--color-by", help="the PNG's colouring (default: the first statistic, else a label score)")
    fmap.add_argument("--top-n", type=count(at_least=0), default=5, help="top examples per feature in the HTML (default 5; 0: none)")
    fmap.add_argument("--context", type=count(at_least=0), default=8, help="tokens either side of each example (default 8)")
    fmap.add_argument("--seed", type=count(at_least=0), default=0, help="UMAP's random seed, >= 0 (default 0)")
    fmap.add_argument("--n-neighbors", type=count(at_least=2), default=15, help="UMAP's n_neighbors, >= 2 (default 15)")
    fmap.add_argument("--min-dist", type=nonnegative_float, default=0.1, help="UMAP's min_dist, >= 0 (default 0.1)")
    fmap.add_argument(
        "--pca-dims", type=_pca_dims, default="auto",
        help="k-NN in this many projected dims (0: every dim, exact; default auto: every dim for small SAEs, else 64)",
    )  # fmt: skip
    fmap.add_argument("--knn", choices=("auto", "exact", "nndescent"), default="auto")
    fmap.add_argument("--n-epochs", type=count(), default=None, help="UMAP epochs (default: UMAP's)")
    fmap.add_argument("--device", default="cpu", help="where to load the SAE (default cpu)")
    fmap.add_argument("--title", help="title of the map (default: the release and id)")
    fmap.add_argument("--no-png", action="store_true")
    fmap.add_argument("--no-html", action="store_true")
    fmap.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_paths(
    labels: Path | str | None, activations: Path | str | None, db_dir: Path | None
) -> tuple[Path | str | None, Path | str | None]:
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


def _open_db(args: argparse.Namespace) -> Any:
    """The FeatureDB the flags name: --goodfire, else explicit files/URLs or --db-dir."""
    from r1_plugin.features.db import FeatureDB

    if args.goodfire:
        if args.labels or args.activations or args.db_dir:
            raise R1PluginError("--goodfire names the files itself: drop --labels / --activations / --db-dir")
        return FeatureDB.goodfire(args.goodfire, args.sample or "full", base_url=args.base_url)
    if args.base_url or args.sample:
        raise R1PluginError("--sample and --base-url go with --goodfire")
    labels, activations = resolve_paths(args.labels, args.activations, args.db_dir)
    return FeatureDB(labels=labels, activations=activations)


def _search(args: argparse.Namespace) -> int:
    with _open_db(args) as db:
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
    from r1_plugin.features.db import UnknownFeatureError
    from r1_plugin.features.render import render_html, render_terminal

    with _open_db(args) as db:
        label = None
        if db.n_labels:
            try:
                label = db.label(args.feature_id)
            except UnknownFeatureError:
                label = "(no label)"
        examples = (
            db.top_examples(args.feature_id, k=args.k, context=args.context)
            if db.activations_path is not None
            else []
        )
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
    from r1_plugin.values import positive

    stall = positive("--stall-timeout", args.stall_timeout)
    paths = download(
        args.sae, args.sample, args.dest, activations=not args.labels_only,
        labels_format="csv" if args.csv else "db", base=args.base_url, yes=args.yes,
        stall_timeout=stall, check_remote=args.check_remote,
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


def _pca_dims(text: str) -> int | str | None:
    """argparse type of --pca-dims: 'auto', 0 (every dimension) or a number of dimensions."""
    if text == "auto":
        return "auto"
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--pca-dims must be 'auto', 0 or a positive number, got {text!r}")
    return int(text) or None


def _map_sae(args: argparse.Namespace) -> tuple[Any, str]:
    """The SAE (or its decoder) the map is drawn from, and its name: RELEASE SAE_ID, or --sae-path [SAE_ID]."""
    from r1_plugin.features.feature_map import FeatureMapError, load_decoder, load_sae

    if args.sae_path is None:
        if args.release is None or args.sae_id is None:
            raise FeatureMapError("give either RELEASE SAE_ID or --sae-path PATH (not both)")
        return load_sae(args.release, args.sae_id, device=args.device), f"{args.release} / {args.sae_id}"
    if args.sae_id is not None:
        raise FeatureMapError("give either RELEASE SAE_ID or --sae-path PATH [SAE_ID] (not both)")
    path, sae_id = args.sae_path.expanduser(), args.release  # with --sae-path, the one positional is the SAE id
    if path.is_file():  # a Goodfire .pt state dict
        if sae_id is not None:
            raise FeatureMapError("give either RELEASE SAE_ID or --sae-path PATH [SAE_ID]; a .pt file holds one "
                                  "SAE, so it takes no SAE id")
        return load_decoder(path), str(path)
    from r1_plugin.saes.sae_folders import load_sae_from_path

    sae = load_sae_from_path(path, sae_id, device=args.device)  # the loader steer and harvest use
    return sae, str(path) + (f" / {sae_id}" if sae_id else "")


def _map(args: argparse.Namespace) -> int:
    from r1_plugin.cli._model_args import check_device
    from r1_plugin.features import FeatureDB
    from r1_plugin.features.feature_map import MapParams, feature_map, read_stat_file

    check_device(args.device)
    sae, source = _map_sae(args)
    params = MapParams(
        seed=args.seed, n_neighbors=args.n_neighbors, min_dist=args.min_dist,
        pca_dims=args.pca_dims, knn=args.knn, n_epochs=args.n_epochs,
    )  # fmt: skip
    stats = dict(read_stat_file(spec) for spec in args.stat)
    db = None
    if args.labels is not None or args.activations is not None or args.db_dir is not None:
        labels, activations = resolve_paths(args.labels, args.activations, args.db_dir)
        db = FeatureDB(labels=labels, activations=activations)
    try:
        result = feature_map(
            sae, args.out, db=db, stats=stats, color_by=args.color_by, top_n=args.top_n, context=args.context,
            params=params, name=args.name, png=not args.no_png, html=not args.no_html,
            title=args.title or source, progress=not args.no_progress,
        )  # fmt: skip
    finally:
        if db is not None:
            db.close()
    emb = result.map.embedding
    if emb is not None:
        state = "cache hit" if emb.cache_hit else "cache miss"
        print(f"embedding: {state} ({emb.cache_path}), {emb.seconds:.1f}s")
    for path in (result.png, result.html):
        if path is not None:
            print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    from r1_plugin.cli._harvest import run_harvest

    action = {"search": _search, "show": _show, "download": _download, "merge": _merge, "map": _map,
              "harvest": run_harvest}[args.features_command]
    return action(args)
