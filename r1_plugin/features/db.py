"""Read-only access to feature databases in Goodfire's R1 schema: labels, search and max-activating examples.

Goodfire publish, per SAE, a labels file `autointerp.db` (SQLite; also `autointerp.csv`) and an activations
file `<sae>[-10|-1|-0-1].ddb` (DuckDB) with two tables:

    autointerp(feature_id, label, quality, interestingness, model_name, prompt_version)
    tokens(sequence_id, token_idx, token, decoded_token)
    activations(feature_id, sequence_id, token_idx, strength)

`FeatureDB` opens both read-only (the labels may also live inside the activations file, as in databases built
by `r1_plugin.features.harvester.merge_shards`). Every query is parameterised: user text only ever travels as a
bound parameter, never as SQL. Either file may be an http(s):// or s3:// URL (see `r1_plugin.features.remote`):
the activations file is then read in place, a few blocks per query, and `FeatureDB.goodfire` opens Goodfire's.

`FeatureDB` is the front door; the work is done by one module per job: `schema` (the tables and their checks),
`connection` (opening and attaching), `label_table` (reading any labels format), `label_queries` (get, search),
`examples` (top activations and their token windows), `scan_check` (profiling a lookup) and `render`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from r1_plugin.features import connection, examples, label_queries, remote
from r1_plugin.features.label_table import load_labels
from r1_plugin.features.records import Example, FeatureLabel
from r1_plugin.features.remote import RemoteReads, is_remote
from r1_plugin.features.scan_check import ScanCheck, scan_check
from r1_plugin.features.schema import (
    ACTIVATIONS_SCHEMA,
    DUCKDB_MAGIC,
    LABELS_SCHEMA,
    SQLITE_MAGIC,
    FeatureDBError,
    LabelFormat,
    UnknownFeatureError,
    detect_format,
)

__all__ = [  # the names this module has always offered, wherever they are defined now
    "ACTIVATIONS_SCHEMA",
    "DUCKDB_MAGIC",
    "LABELS_SCHEMA",
    "SQLITE_MAGIC",
    "FeatureDB",
    "FeatureDBError",
    "FeatureLabel",
    "LabelFormat",
    "ScanCheck",
    "UnknownFeatureError",
    "detect_format",
]


class FeatureDB:
    """A read-only view of one SAE's feature database: `label`, `search` and `top_examples`.

    `labels`: Goodfire's `autointerp.db` (SQLite or DuckDB, detected from the header) or `autointerp.csv`;
    None reads the `autointerp` table of the activations file, if it has one. `activations`: a DuckDB file with
    `tokens` and `activations` (Goodfire's `<sae>.ddb` or a harvested one); None gives a labels-only DB.

    Either may be an `https://`, `http://` or `s3://` URL (a str; a Path is always local). A remote activations
    file is attached read-only and queried in place; a remote labels file is fetched once into `cache_dir`
    (default: $R1_FEATURES_CACHE, else <HF_HOME>/r1_plugin/features). `s3` holds options of DuckDB's S3 secret
    for s3:// URLs (region, endpoint, url_style, use_ssl, key_id, secret, session_token).
    """

    def __init__(
        self,
        labels: str | Path | None = None,
        activations: str | Path | None = None,
        *,
        s3: Mapping[str, str | bool] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if labels is None and activations is None:
            raise FeatureDBError("FeatureDB needs a labels file, an activations file, or both")
        self.labels_path: Path | str | None = connection.location(labels)
        self.activations_path: Path | str | None = connection.location(activations)
        self._con = connection.connect([self.labels_path, self.activations_path], s3)
        self._reads_mark = 0
        try:
            labels_file = connection.local_labels_file(self._con, self.labels_path, self.activations_path, cache_dir)
            self._has_activations = self.activations_path is not None
            self._token_has_id = False  # whether the tokens table has token ids (the `token` column)
            if self.activations_path is not None:
                self._token_has_id = connection.attach_activations(self._con, self.activations_path)
            self._has_labels = load_labels(self._con, labels_file, self.activations_path)
            self._reads_mark = remote.remote_reads(self._con)[1] if self.is_remote else 0
        except BaseException:
            self._con.close()
            raise

    @classmethod
    def goodfire(
        cls,
        sae: str,
        sample: str = "full",
        *,
        labels: bool = True,
        base_url: str | None = None,
        s3: Mapping[str, str | bool] | None = None,
        cache_dir: str | Path | None = None,
    ) -> FeatureDB:
        """Goodfire's published database of the `sae` ('logic' or 'math') SAE, read over HTTPS in place.

        `sample`: 'full', '10', '1' or '0.1' (percent of tokens). Nothing is downloaded but the labels file
        (`autointerp.db`, a few MB, once into the cache). `base_url`: the bucket (default $R1_FEATURES_BASE_URL,
        else Goodfire's S3 bucket over HTTPS; `s3://goodfire-r1-features` reads it through the S3 API).
        """
        from r1_plugin.features.download import activations_filename, file_url

        activations = file_url(sae, activations_filename(sae, sample), base_url)
        label_url = file_url(sae, "autointerp.db", base_url) if labels else None
        return cls(labels=label_url, activations=activations, s3=s3, cache_dir=cache_dir)

    # ------------------------------------------------------------------ labels
    def _require_labels(self) -> None:
        if not self._has_labels:
            raise FeatureDBError(
                f"no labels: {self.activations_path} has no 'autointerp' table; pass labels=<autointerp.db>"
            )

    @property
    def n_labels(self) -> int:
        """How many features have a label."""
        return label_queries.count_labels(self._con) if self._has_labels else 0

    def get(self, feature_id: int) -> FeatureLabel:
        """The full label record of `feature_id` (the best one where the file has several, see `label`)."""
        self._require_labels()
        found = label_queries.find_label(self._con, feature_id)
        if found is None:
            raise UnknownFeatureError(
                f"feature {feature_id} has no label in {self.labels_path or self.activations_path}"
            )
        return found

    def label(self, feature_id: int) -> str:
        """The label of `feature_id`. Several rows per feature: highest quality, then newest prompt_version."""
        return self.get(feature_id).label

    def search(self, text: str, limit: int = 20) -> list[FeatureLabel]:
        """Features whose label contains every word of `text` (case-insensitive), best first.

        Ranking: labels containing the whole phrase before those with the words apart, then by quality,
        then interestingness (both descending, missing last), then feature id.
        """
        self._require_labels()
        return label_queries.search_labels(self._con, text, limit)

    def feature_ids(self) -> list[int]:
        """Every labelled feature id, ascending."""
        self._require_labels()
        return label_queries.labelled_ids(self._con)

    # ------------------------------------------------------------------ activations
    def _require_activations(self) -> None:
        if not self._has_activations:
            raise FeatureDBError("no activations file: pass activations=<sae>.ddb to see examples")

    def top_activations(self, feature_id: int, k: int = 10) -> list[tuple[int, int, float]]:
        """The `k` strongest (sequence_id, token_idx, strength) of `feature_id`; ties by position."""
        self._require_activations()
        return examples.top_activations(self._con, feature_id, k)

    def top_examples(self, feature_id: int, k: int = 10, context: int = 8) -> list[Example]:
        """The `k` strongest activations of `feature_id` with `context` tokens either side, strongest first."""
        self._require_activations()
        return examples.top_examples(self._con, feature_id, k, context, self._token_has_id)

    def show(
        self, feature_id: int, k: int = 10, context: int = 8, html: bool = False, color: bool = True
    ) -> str:
        """A feature's label and top examples rendered for the terminal (ANSI) or as an escaped HTML fragment."""
        from r1_plugin.features.render import render_html, render_terminal

        label = None
        if self._has_labels:
            found = label_queries.find_label(self._con, feature_id)
            label = "(no label)" if found is None else found.label
        shown = self.top_examples(feature_id, k=k, context=context) if self._has_activations else []
        if html:
            return render_html(shown, feature_id=feature_id, label=label)
        return render_terminal(shown, feature_id=feature_id, label=label, color=color)

    # ------------------------------------------------------------------ remote
    @property
    def is_remote(self) -> bool:
        """Whether the labels or the activations are read over the network."""
        return is_remote(self.labels_path) or is_remote(self.activations_path)

    def remote_reads(self, reset: bool = False) -> RemoteReads:
        """What the queries since opening (or the last reset) read over the network: requests and bytes.

        Counts DuckDB's own block reads of the remote files (its FileSystem log), so it excludes the opening
        (header and catalog) and includes nothing served from DuckDB's in-memory cache of remote blocks.
        """
        if not self.is_remote:
            return RemoteReads(0, 0)
        reads, mark = remote.remote_reads(self._con, self._reads_mark)
        if reset:
            self._reads_mark = mark
        return reads

    def scan_check(self, feature_id: int, k: int = 10) -> ScanCheck:
        """How well the activations file's layout serves `top_activations(feature_id, k)`: run it once, profiled.

        Reports the rows the filtered scan of `activations` read after DuckDB's zone maps skipped row groups
        (a file sorted by feature_id reads one or two row groups of 122,880 rows; an unsorted one reads them
        all), and, for a remote file, the requests and bytes the query fetched. Run it on a feature not queried
        before: blocks already fetched are served from DuckDB's in-memory cache.
        """
        self._require_activations()
        return scan_check(self._con, feature_id, k, self.remote_reads)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the connection (the files were opened read-only; nothing to flush)."""
        self._con.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureDB(labels={self.labels_path}, activations={self.activations_path})"
