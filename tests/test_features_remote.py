"""FeatureDB over HTTP(S) and S3 through a local Range-capable server: answers equal local ones, reads are ranged."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from r1_plugin.cli import main
from r1_plugin.features import remote
from r1_plugin.features.db import FeatureDB, FeatureDBError, UnknownFeatureError
from r1_plugin.features.download import DownloadError
from r1_plugin.testing.feature_db import HOSTILE_LABELS, write_labels
from r1_plugin.testing.range_server import RangeServer
from r1_plugin.testing.synthetic_feature_db import write_synthetic_db

try:
    remote.extension_path()
    HTTPFS = None
except remote.RemoteDBError as exc:
    HTTPFS = str(exc)
needs_httpfs = pytest.mark.skipif(HTTPFS is not None, reason=f"httpfs extension unavailable: {HTTPFS}")

N_FEATURES = 16_000
FEATURES = (0, 1, 17, 7777, N_FEATURES - 1)  # first, second, middle, last feature
BLOCK = 256 * 1024  # DuckDB's storage block: the unit it reads over HTTP
SEARCHES = ("backtracking", "wait doubt", "#17", "subset entity", "zzz-no-match", HOSTILE_LABELS[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A sorted (harvest-layout) database of 1M + 1M rows (15 MB), its labels as SQLite, a copy with a hostile
    file name, and the same rows shuffled (a layout nobody chose)."""
    root = tmp_path_factory.mktemp("remote")
    ddb = write_synthetic_db(root / "logic-1.ddb", N_FEATURES, 64, 1000, 1001, layout="sorted")
    con = duckdb.connect(str(ddb), read_only=True)
    labels = con.execute("SELECT * FROM autointerp ORDER BY feature_id").fetchall()
    con.close()
    labels[5] = (5, HOSTILE_LABELS[0], *labels[5][2:])
    labels_db = write_labels(root / "autointerp.db", labels, "sqlite")
    odd = root / "it's a file.ddb"
    shutil.copy(ddb, odd)
    shuffled = write_synthetic_db(root / "shuffled.ddb", N_FEATURES, 64, 1000, 1001, layout="shuffled")
    return {"ddb": ddb, "labels": labels_db, "odd": odd, "shuffled": shuffled}


@pytest.fixture(scope="module")
def server(files):
    srv = RangeServer(
        {
            "logic/logic-1.ddb": files["ddb"],
            "logic/autointerp.db": files["labels"],
            "odd/it's a file.ddb": files["odd"],
        }
    )
    with srv:
        yield srv


def _same_answers(local: FeatureDB, other: FeatureDB) -> None:
    """Every query method answers the same on both."""
    assert other.n_labels == local.n_labels
    assert other.feature_ids() == local.feature_ids()
    for fid in FEATURES:
        assert other.get(fid) == local.get(fid)
        assert other.label(fid) == local.label(fid)
        assert other.top_activations(fid, k=7) == local.top_activations(fid, k=7)
        assert other.top_examples(fid, k=5, context=3) == local.top_examples(fid, k=5, context=3)
        assert other.show(fid, k=3, color=False) == local.show(fid, k=3, color=False)
        assert other.show(fid, k=3, html=True) == local.show(fid, k=3, html=True)
    for text in SEARCHES:
        assert other.search(text, limit=9) == local.search(text, limit=9)
    assert other.top_examples(10**6, k=3) == local.top_examples(10**6, k=3) == []
    with pytest.raises(UnknownFeatureError):
        other.label(10**6)


def _gets(srv: RangeServer, path: str) -> list:
    return [r for r in srv.log() if r.method == "GET" and r.path == path]


@needs_httpfs
def test_http_equals_local_and_reads_ranges(files, server, tmp_path):
    size = files["ddb"].stat().st_size
    server.reset()
    url = f"{server.url}/logic/logic-1.ddb"
    with (
        FeatureDB(activations=files["ddb"]) as local,
        FeatureDB(activations=url, cache_dir=tmp_path) as db,
    ):
        assert db.is_remote and not local.is_remote
        opened = server.bytes_sent()
        db.remote_reads(reset=True)
        server.reset()
        top = db.top_activations(7777, k=10)
        assert top == local.top_activations(7777, k=10) and len(top) == 10
        one_query = _gets(server, "logic/logic-1.ddb")
        # DuckDB's own counter (FeatureDB.remote_reads) agrees with what the server sent
        assert db.remote_reads() == remote.RemoteReads(len(one_query), sum(r.nbytes for r in one_query))
        # sorted by feature: its rows sit in one or two row groups, 4 columns each, a block or so per column
        assert 0 < sum(r.nbytes for r in one_query) <= 8 * BLOCK < size / 7
        server.reset()
        first = db.top_examples(7778, k=10, context=4)
        assert first == local.top_examples(7778, k=10, context=4) and len(first) == 10
        assert 0 < server.bytes_sent() < size / 2
        both = one_query + _gets(server, "logic/logic-1.ddb")
        assert db.remote_reads() == remote.RemoteReads(len(both), sum(r.nbytes for r in both))
        _same_answers(local, db)
        with pytest.raises(duckdb.Error):  # attached read-only
            db._con.execute("DELETE FROM acts.activations")
    log = server.log()
    gets = [r for r in log if r.method == "GET"]
    assert gets and all(r.range is not None and r.status == 206 for r in gets)  # never a whole-file GET
    assert all(r.method in ("GET", "HEAD") for r in log)  # nothing is ever written
    assert opened + server.bytes_sent() < size  # the whole session read less than the file


@needs_httpfs
def test_goodfire_urls_and_labels_fetched_once(files, server, tmp_path, monkeypatch):
    monkeypatch.delenv("R1_FEATURES_BASE_URL", raising=False)
    server.reset()
    with (
        FeatureDB(labels=files["labels"], activations=files["ddb"]) as local,
        FeatureDB.goodfire("logic", sample="1", base_url=server.url, cache_dir=tmp_path) as db,
    ):
        assert db.activations_path == f"{server.url}/logic/logic-1.ddb"
        assert db.labels_path == f"{server.url}/logic/autointerp.db"
        assert db.label(5) == HOSTILE_LABELS[0]
        _same_answers(local, db)
    cached = remote.cached_path(f"{server.url}/logic/autointerp.db", tmp_path)
    assert cached.read_bytes() == files["labels"].read_bytes()
    assert _gets(server, "logic/autointerp.db")
    server.reset()
    monkeypatch.setenv("R1_FEATURES_BASE_URL", server.url)  # the base URL also comes from the environment
    with FeatureDB.goodfire("logic", "1", cache_dir=tmp_path) as again:
        assert again.search("backtracking") == local_search(files, "backtracking")
    assert [
        r for r in server.log() if r.path == "logic/autointerp.db"
    ] == []  # the labels came from the cache
    with pytest.raises(DownloadError, match="unknown sample"):
        FeatureDB.goodfire("logic", sample="5")
    with pytest.raises(DownloadError, match="unknown SAE"):
        FeatureDB.goodfire("physics")


def local_search(files: dict[str, Path], text: str) -> list:
    with FeatureDB(labels=files["labels"]) as db:
        return db.search(text)


@needs_httpfs
def test_s3_path_style_equals_local(files, server, tmp_path):
    server.reset()
    s3 = {"endpoint": server.endpoint, "url_style": "path", "use_ssl": False}
    with (
        FeatureDB(activations=files["ddb"]) as local,
        FeatureDB(activations="s3://logic/logic-1.ddb", s3=s3) as db,
    ):
        _same_answers(local, db)
    gets = _gets(server, "logic/logic-1.ddb")
    assert gets and all(r.range is not None for r in gets)
    with pytest.raises(remote.RemoteDBError, match="unknown s3 option"):
        FeatureDB(activations="s3://logic/logic-1.ddb", s3={"regoin": "eu-west-1"})
    with pytest.raises(remote.RemoteDBError, match="NUL"):
        FeatureDB(activations="s3://logic/logic-1.ddb", s3={"region": "x\x00"})
    with pytest.raises(FeatureDBError, match="s3:// locations only"):
        FeatureDB(activations=files["ddb"], s3=s3)


@needs_httpfs
def test_quotes_in_locations_stay_literal(files, server):
    with FeatureDB(activations=files["odd"]) as local, FeatureDB(activations=str(files["odd"])) as by_str:
        assert by_str.top_activations(3) == local.top_activations(3)
    with FeatureDB(activations=f"{server.url}/odd/it's a file.ddb") as db:
        assert db.top_activations(3) == local_top(files, 3)


def local_top(files: dict[str, Path], fid: int) -> list:
    with FeatureDB(activations=files["ddb"]) as db:
        return db.top_activations(fid)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@needs_httpfs
def test_clear_errors_for_network_and_missing_files(server, tmp_path):
    with pytest.raises(remote.RemoteDBError, match="could not be reached") as err:
        FeatureDB(activations=f"http://127.0.0.1:{_closed_port()}/logic/logic-1.ddb")
    assert "r1-plugin features download logic --sample 1" in str(err.value)
    with pytest.raises(remote.RemoteDBError, match="no such file at that URL") as err:
        FeatureDB.goodfire("math", "0.1", base_url=server.url, labels=False)
    assert "r1-plugin features download math --sample 0.1" in str(err.value)
    with pytest.raises(remote.RemoteDBError, match="labels.csv: no such file"):
        FeatureDB(labels=f"{server.url}/logic/labels.csv", cache_dir=tmp_path)
    with pytest.raises(remote.RemoteDBError, match="not a valid DuckDB database"):
        FeatureDB(activations=f"{server.url}/logic/autointerp.db")  # a SQLite file
    assert not list(tmp_path.rglob("*"))  # nothing half-written into the cache


@pytest.fixture()
def no_extension_dir(tmp_path, monkeypatch) -> Path:
    """An empty home, so DuckDB's extension directory (~/.duckdb/extensions) holds no httpfs of an earlier
    INSTALL; INSTALL goes to a closed local port unless a test points it elsewhere."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(remote, "EXTENSION_REPOSITORY", f"http://127.0.0.1:{_closed_port()}")
    return tmp_path


@needs_httpfs
def test_httpfs_from_the_matching_wheel_needs_no_network(no_extension_dir):
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    assert remote.load_httpfs(con) == "wheel"  # the repository is a closed port: no network was needed
    assert con.execute(
        "SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'httpfs'"
    ).fetchall() == [(True,)]
    con.close()
    assert not list(no_extension_dir.rglob("*.duckdb_extension"))  # nothing installed anywhere


@pytest.fixture()
def extension_repository(tmp_path) -> Iterator[tuple[RangeServer, str]]:
    """A local copy of DuckDB's extension repository holding this duckdb's httpfs (the wheel's signed file)."""
    import gzip

    platform = duckdb.connect().execute("PRAGMA platform").fetchone()[0]
    key = f"v{duckdb.__version__}/{platform}/httpfs.duckdb_extension.gz"
    gz = tmp_path / "httpfs.duckdb_extension.gz"
    gz.write_bytes(gzip.compress(remote.extension_path().read_bytes(), compresslevel=1))
    with RangeServer({key: gz}, max_requests=20) as repo:
        yield repo, key


@needs_httpfs
def test_httpfs_from_the_repository_when_no_wheel_matches(
    files, server, no_extension_dir, extension_repository, monkeypatch
):
    repo, key = extension_repository
    monkeypatch.setattr(
        remote, "EXTENSION_MODULE", "no_such_module_r1_plugin_httpfs"
    )  # no wheel (duckdb 2.x)
    monkeypatch.setattr(remote, "EXTENSION_REPOSITORY", repo.url)
    url = f"{server.url}/logic/logic-1.ddb"
    with FeatureDB(activations=files["ddb"]) as local, FeatureDB(activations=url) as db:
        _same_answers(local, db)
    assert [(r.path, r.status) for r in repo.log() if r.method == "GET"] == [(key, 200)]  # INSTALLed once
    assert list(no_extension_dir.rglob("httpfs.duckdb_extension"))  # into DuckDB's extension directory
    repo.reset()
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    assert remote.load_httpfs(con) == "repository"
    con.close()
    assert repo.log() == []  # the next connection LOADs it from the extension directory: no network


def test_no_httpfs_anywhere_is_a_clear_error(no_extension_dir, monkeypatch):
    monkeypatch.setattr(remote, "EXTENSION_MODULE", "no_such_module_r1_plugin_httpfs")
    repository = remote.EXTENSION_REPOSITORY
    with pytest.raises(remote.RemoteDBError) as err:
        FeatureDB(activations="https://example.invalid/logic/logic-1.ddb")
    message = str(err.value)
    assert "no duckdb-extension-httpfs wheel is installed" in message
    assert f"INSTALL httpfs from {repository} failed" in message
    assert remote.install_hint() in message and "pip install" in remote.install_hint()
    assert "r1-plugin features download" in message and "\n" not in message.strip()
    # a duckdb newer than any wheel (2.x): told that the repository is the way, and which pair PyPI has
    monkeypatch.setattr(remote, "EXTENSION_MODULE", "duckdb_extension_httpfs")
    monkeypatch.setattr(remote.duckdb, "__version__", "2.0.1")
    with pytest.raises(remote.RemoteDBError) as err:
        remote.load_httpfs(duckdb.connect(":memory:", config={"autoinstall_known_extensions": False}))
    message = str(err.value)
    if HTTPFS is None:  # the 1.5.5 wheel is there, but cannot serve another duckdb
        assert "but duckdb is v2.0.1; they must match exactly" in message
    assert "stops at 1.5.5, so duckdb 2.0.1 gets httpfs from DuckDB's extension repository" in message
    assert 'pip install "duckdb==1.5.5" "duckdb-extension-httpfs==1.5.5"' in message


def test_pyproject_admits_duckdb_2_and_pins_the_test_pair_in_dev():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    runtime = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert {"1.5.0", "1.5.5", "2.0.1"} <= set(runtime["duckdb"].specifier.filter(["1.5.0", "1.5.5", "2.0.1"]))
    assert "duckdb-extension-httpfs" not in runtime  # no exact runtime pin that downgrades a user's duckdb
    dev = {r.name: r for r in map(Requirement, project["optional-dependencies"]["dev"])}
    pair = f"=={remote.NEWEST_HTTPFS_WHEEL}"
    assert str(dev["duckdb"].specifier) == str(dev["duckdb-extension-httpfs"].specifier) == pair


def test_location_helpers(tmp_path, monkeypatch):
    assert (
        remote.is_remote("https://x/y.ddb") and remote.is_remote("S3://b/k") and remote.is_remote("http://h/")
    )
    assert (
        not remote.is_remote(Path("https://x"))
        and not remote.is_remote("x.ddb")
        and not remote.is_remote(None)
    )
    assert remote.sql_literal("it's") == "'it''s'"
    url = "https://h/logic/autointerp.db"
    assert remote.cached_path(url, tmp_path).parent.parent == tmp_path
    assert remote.cached_path(url, tmp_path).name == "autointerp.db"
    assert remote.cached_path(url, tmp_path) != remote.cached_path("https://h/math/autointerp.db", tmp_path)
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "env"))
    assert remote.cache_dir() == tmp_path / "env"
    monkeypatch.delenv(remote.CACHE_ENV)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))  # what $HF_HOME sets at import
    assert remote.cache_dir() == tmp_path / "hf" / "r1_plugin" / "features"
    assert remote.cache_dir(tmp_path / "arg") == tmp_path / "arg"


@needs_httpfs
def test_cli_search_and_show_remote(files, server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path))
    base = ["--goodfire", "logic", "--sample", "1", "--base-url", server.url]
    assert main(["features", "search", "backtracking", "--json", "--limit", "4", *base]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["feature_id"] for r in rows] == [h.feature_id for h in local_search(files, "backtracking")[:4]]
    url = f"{server.url}/logic/logic-1.ddb"
    assert main(["features", "show", "17", "-k", "2", "--no-color", "--activations", url]) == 0
    out = capsys.readouterr().out
    with FeatureDB(activations=files["ddb"]) as local:
        assert out.rstrip("\n") == local.show(17, k=2, color=False)
    assert main(["features", "show", "17", *base, "--activations", url]) == 2
    assert "--goodfire names the files itself" in capsys.readouterr().err
    assert main(["features", "search", "wait", "--labels", str(files["labels"]), "--sample", "1"]) == 2
    assert "go with --goodfire" in capsys.readouterr().err


def test_scan_check_tells_sorted_from_shuffled(files):
    shuffled = files["shuffled"]
    with FeatureDB(activations=files["ddb"]) as db:
        by_feature = db.scan_check(7777, k=5)
        total = db._con.execute("SELECT count(*) FROM acts.activations").fetchone()[0]
    assert by_feature.rows_total == total == N_FEATURES * 64
    assert 0 < by_feature.rows_scanned <= 2 * 122_880 and by_feature.fraction_scanned < 0.25
    assert (by_feature.requests, by_feature.bytes) == (0, 0)  # a local file
    with FeatureDB(activations=shuffled) as db:
        unsorted = db.scan_check(7777, k=5)
        assert db.top_activations(7777, 5) == local_top(files, 7777)[:5]  # same rows, another layout
    assert unsorted.rows_scanned == unsorted.rows_total == total


@needs_httpfs
def test_scan_check_counts_remote_bytes(files):
    checks = {}
    for name, path in (("sorted", files["ddb"]), ("shuffled", files["shuffled"])):
        with RangeServer({"a.ddb": path}) as srv, FeatureDB(activations=f"{srv.url}/a.ddb") as db:
            srv.reset()
            checks[name] = db.scan_check(4321)
            gets = _gets(srv, "a.ddb")
            assert (checks[name].requests, checks[name].bytes) == (len(gets), sum(r.nbytes for r in gets))
            with FeatureDB(activations=path) as local:
                _same_answers(local, db)  # the unsorted layout answers the same, only slower
    assert checks["sorted"].fraction_scanned < 0.25 and checks["shuffled"].fraction_scanned == 1.0
    assert checks["sorted"].bytes < checks["shuffled"].bytes


def test_range_server_serves_and_records_ranges(tmp_path):
    import urllib.error
    import urllib.request

    data = bytes(range(256)) * 40
    (tmp_path / "f.bin").write_bytes(data)

    def get(url: str, rng: str | None = None, method: str = "GET") -> tuple[int, bytes, dict]:
        req = urllib.request.Request(url, headers={"Range": rng} if rng else {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, b"", dict(exc.headers)

    with RangeServer({"d/f.bin": tmp_path / "f.bin"}, max_requests=7) as srv:
        url = f"{srv.url}/d/f.bin"
        assert get(url, "bytes=10-19")[:2] == (206, data[10:20])
        status, body, headers = get(url, "bytes=-5")
        assert (status, body, headers["Content-Range"]) == (
            206,
            data[-5:],
            f"bytes {len(data) - 5}-{len(data) - 1}/{len(data)}",
        )
        assert get(url, "bytes=10000-")[:2] == (206, data[10000:])
        assert get(url, f"bytes={len(data)}-")[0] == 416
        assert get(url)[:2] == (200, data)
        assert get(f"{srv.url}/d/missing.bin")[0] == 404
        status, body, headers = get(url, method="HEAD")
        assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
        assert get(url, "bytes=0-0")[0] == 503  # past max_requests: a runaway client is cut off
        log = srv.log()
    assert [(r.method, r.range, r.status, r.nbytes) for r in log] == [
        ("GET", "bytes=10-19", 206, 10),
        ("GET", "bytes=-5", 206, 5),
        ("GET", "bytes=10000-", 206, len(data) - 10000),
        ("GET", f"bytes={len(data)}-", 416, 0),
        ("GET", None, 200, len(data)),
        ("GET", None, 404, 0),
        ("HEAD", None, 200, 0),
        ("GET", "bytes=0-0", 503, 0),
    ]
