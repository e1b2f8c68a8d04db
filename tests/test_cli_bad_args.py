"""Every `r1-plugin` subcommand (and `python -m r1_plugin.demo`) on bad arguments: exactly one line on stderr, exit
code 2, no traceback, and no model loaded (a value that cannot work fails before the slow part).

One table, run in-process through `r1_plugin.cli.main` (and the demo's `main`); a few rows again in real
processes. Each row names the words the one line must hold, so a right code with a wrong reason fails too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from r1_plugin.cli import main
from r1_plugin.demo import assets

REPO = Path(__file__).resolve().parents[1]
M = str(assets.MODEL_DIR)  # the embedded tiny R1 (d_model 96, 3 layers), by path: offline
S = str(assets.SAE_DIR)  # its SAE release folder (sae.yaml; reads blocks.2.hook_resid_post)
LABELS, ACTS = str(assets.FEATURES_LABELS), str(assets.FEATURES_ACTIVATIONS)

# Placeholders, filled per run from the fixture's folder.
FILE, MISSING, DIR, UNDER_FILE, OUT, PROMPTS, BAD_CSV, WRONG_SAE = (
    "<file>", "<missing>", "<dir>", "<under-file>", "<out>", "<prompts>", "<bad-csv>", "<wrong-sae>",
)

STEER = ["steer", "--model", M, "--sae-path", S, "--feature", "0", "--prompt", "hi"]
SINKS = ["sinks", "--model", M, "--prompt", "hi"]
SEARCH = ["features", "search", "x", "--labels", LABELS]
SHOW_DB = ["--labels", LABELS, "--activations", ACTS]
MAP = ["features", "map", "--sae-path", S, "-o", OUT]
HARVEST = ["features", "harvest", "--model", M, "--sae-path", S, "--prompts", PROMPTS, "--out", OUT]
MERGE = ["features", "merge", DIR, "-o", f"{OUT}.ddb"]
PREFIX = ["experiment", "prefix-gating", "--model", M, "--sae-path", S, "--feature", "0", "--prompt", "hi",
          "--out", OUT]
OVER = ["experiment", "oversteer", "--model", M, "--sae-path", S, "--feature", "0", "--prompt", "hi", "--out", OUT]
SEGMENTS = ["experiment", "segments", "--model", M, "--sae-path", S, "--prompt", "hi", "--out", OUT]
EXP_SINKS = ["experiment", "sinks", "--model", M, "--prompt", "hi", "--out", OUT]
PLAN = ["models", "plan", M, "--memory-per-device", "80GB"]

# (argv, words the one stderr line must contain)
CASES: list[tuple[list[str], str]] = [
    # top level
    (["nonsense"], "invalid choice"),
    ([], "required: COMMAND"),
    # steer
    ([*STEER, "--strength", "nan"], "finite"),
    ([*STEER, "--strength", "inf"], "finite"),
    ([*STEER, "--strength", "abc"], "'abc' is not a number"),
    ([*STEER, "--gate", "regex:("], "does not compile"),
    ([*STEER, "--max-new-tokens", "0"], ">= 1"),
    ([*STEER, "--sample", "--temperature", "-1"], "> 0"),
    ([*STEER, "--temperature", "nan"], "finite"),
    ([*STEER, "--seed", "-1"], ">= 0"),
    ([*STEER, "--sweep", "0,nan"], "finite"),
    ([*STEER, "--feature", "-5"], ">= 0"),
    ([*STEER, "--width", "x"], "not an integer"),
    ([*STEER, "--n-devices", "0"], ">= 1"),
    ([*STEER, "--device", "cuda:7"], "CUDA device"),
    ([*STEER, "--memory-per-device", "lots"], "cannot read memory size"),
    (["steer", "--model", M, "--sae-path", FILE, "--feature", "0", "--prompt", "hi"], "holds no SAE"),
    (["steer", "--model", M, "--direction", MISSING, "--prompt", "hi", "--hook", "blocks.0.hook_resid_post"],
     "does not exist"),
    # sinks: the flags use SinkThresholds' own checks
    ([*SINKS, "--epsilon", "-1"], "epsilon must be between 0 and 1"),
    ([*SINKS, "--epsilon", "nan"], "epsilon must be a finite number"),
    ([*SINKS, "--epsilon", "1.5"], "between 0 and 1"),
    ([*SINKS, "--min-sink-rate", "inf"], "min_sink_rate must be a finite"),
    ([*SINKS, "--min-queries", "0"], "min_queries must be >= 1"),
    ([*SINKS, "--min-queries", "2.5"], "not an integer"),
    ([*SINKS, "--min-value", "-1"], "min_value must be >= 0"),
    ([*SINKS, "--min-ratio", "nan"], "min_ratio must be a finite"),
    ([*SINKS, "--chunk-size", "0"], "chunk_size must be >= 1"),
    ([*SINKS, "--max-new-tokens", "-1"], ">= 0"),
    ([*SINKS, "--out", FILE], "exists and is not a folder"),
    ([*SINKS, "--out", UNDER_FILE], "is a file, not a folder"),
    ([*SINKS, "--wandb-mode", "bogus"], "invalid choice"),
    # features search / show / download / merge
    ([*SEARCH, "--limit", "0"], ">= 1"),
    (["features", "search", "x", "--labels", BAD_CSV], "bad.csv: a value has the wrong type"),
    (["features", "search", "x", "--labels", MISSING], "labels file not found"),
    (["features", "search", "x", "--db-dir", FILE], "is not a folder"),
    (["features", "show", "-5", *SHOW_DB], ">= 0"),
    (["features", "show", "x", *SHOW_DB], "not an integer"),
    (["features", "show", "0", "-k", "0", *SHOW_DB], ">= 1"),
    (["features", "show", "0", "--context", "-1", *SHOW_DB], ">= 0"),
    (["features", "show", "0", "--html", DIR, *SHOW_DB], "is a folder"),
    (["features", "show", "0", "--sample", "1"], "go with --goodfire"),
    (["features", "download", "bogus"], "invalid choice"),
    (["features", "download", "logic", "--sample", "5"], "invalid choice"),
    ([*MERGE, "--top-k", "0"], ">= 1"),
    (["features", "merge", DIR, "-o", DIR], "is a folder"),
    (["features", "merge", DIR, "-o", f"{UNDER_FILE}.ddb"], "is a file, not a folder"),
    ([*MERGE, "--labels", MISSING], "does not exist"),
    (["features", "merge", DIR, "-o", FILE + ".ddb"], "no harvest shards"),
    # features map
    ([*MAP, "--seed", "-1"], ">= 0"),
    ([*MAP, "--n-neighbors", "1"], ">= 2"),
    ([*MAP, "--min-dist", "nan"], "finite"),
    ([*MAP, "--pca-dims", "x"], "'auto', 0 or a positive number"),
    ([*MAP, "--top-n", "-1"], ">= 0"),
    ([*MAP, "--n-epochs", "0"], ">= 1"),
    (["features", "map", "--sae-path", S, "-o", FILE], "exists and is not a folder"),
    (["features", "map", "--sae-path", DIR, "-o", OUT], "holds no SAE"),
    (["features", "map", "rel", "id", "--sae-path", S, "-o", OUT], "not both"),
    ([*MAP, "--device", "cuda:7"], "CUDA device"),
    # features harvest
    ([*HARVEST, "--min-strength", "nan"], "finite"),
    ([*HARVEST, "--min-strength", "inf"], "finite"),
    ([*HARVEST, "--top-k", "0"], ">= 1"),
    ([*HARVEST, "--shard-index", "-1"], ">= 0"),
    ([*HARVEST, "--num-shards", "0"], ">= 1"),
    ([*HARVEST, "--shard-index", "2", "--num-shards", "2"], "shard_index"),
    (["features", "harvest", "--model", M, "--sae-path", S, "--prompts", MISSING, "--out", OUT], "does not exist"),
    (["features", "harvest", "--model", M, "--sae-path", S, "--prompts", DIR, "--out", OUT], "is a folder"),
    (["features", "harvest", "--model", M, "--sae-path", S, "--prompts", PROMPTS, "--out", FILE], "not a folder"),
    (["features", "harvest", "--model", M, "--sae-path", WRONG_SAE, "--prompts", PROMPTS, "--out", OUT],
     "d_in=7"),
    ([*HARVEST, "--first-n-layers", "2"], "loads 2 layer(s)"),
    # experiments
    ([*PREFIX, "--n-boot", "0"], ">= 1"),
    ([*PREFIX, "--strength", "nan"], "finite"),
    ([*PREFIX, "--seed", "-1"], ">= 0"),
    ([*PREFIX, "--max-new-tokens", "0"], ">= 1"),
    ([*PREFIX, "--prefix-max-tokens", "0"], ">= 1"),
    ([*PREFIX, "--prompts-file", MISSING], "does not exist"),
    ([*PREFIX[:-1], FILE], "exists and is not a folder"),
    ([*OVER, "--strengths", "nan"], "finite"),
    ([*OVER, "--strengths", "1,abc"], "'abc' is not a number"),
    ([*OVER, "--gate", "regex:("], "does not compile"),
    ([*OVER, "--ngram", "0"], ">= 1"),
    ([*OVER, "--reversion-drop", "2"], "between 0 and 1"),
    ([*OVER, "--batch-size", "0"], ">= 1"),
    ([*SEGMENTS, "--top-k", "0"], ">= 1"),
    ([*SEGMENTS, "--features", "-1"], ">= 0"),
    ([*SEGMENTS, "--n-boot", "-3"], ">= 1"),
    ([*EXP_SINKS, "--epsilon", "nan"], "epsilon must be a finite"),
    ([*EXP_SINKS, "--min-queries", "0"], "min_queries must be >= 1"),
    ([*EXP_SINKS, "--min-ratio", "-1"], "min_ratio must be >= 0"),
    # saes, models, doctor
    (["saes"], "required: ACTION"),
    (["saes", "list", "--bogus"], "unrecognized arguments"),
    (["models", "--bogus"], "unrecognized arguments"),
    ([*PLAN, "--n-devices", "0"], ">= 1"),
    ([*PLAN, "--first-n-layers", "-2"], ">= 1"),
    ([*PLAN, "--kv-cache-tokens", "-1"], ">= 0"),
    ([*PLAN, "--batch", "0"], ">= 1"),
    ([*PLAN, "--dtype", "int8"], "invalid choice"),
    (["models", "plan", M, "--memory-per-device", "0"], "must be positive"),
    (["models", "plan", M, "--memory-per-device", "many"], "cannot read memory size"),
    (["models", "plan", M], "--memory-per-device is required"),
    (["models", "plan", MISSING, "--memory-per-device", "80GB"], "missing.txt does not exist"),
    (["doctor", "--bogus"], "unrecognized arguments"),
]

DEMO_CASES: list[tuple[list[str], str]] = [
    (["--max-new-tokens", "0"], ">= 1"),
    (["--strength", "nan"], "finite"),
    (["--seed", "-1"], ">= 0"),
    (["--n-devices", "0"], ">= 1"),
    (["--dtype", "int8"], "invalid choice"),
    (["--device", "cuda:9"], "CUDA device"),
    (["--out", FILE], "exists and is not a folder"),
    (["--features-labels", MISSING], "does not exist"),
    (["--sae-dtype", "float16"], "does not take --sae-dtype"),
    (["--wandb-mode", "loud"], "invalid choice"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The paths the placeholders stand for."""
    root = tmp_path_factory.mktemp("bad_args")
    (root / "a_file").write_text("not a folder\n")
    (root / "a_dir").mkdir()
    (root / "prompts.txt").write_text("What is 7 times 8?\n")
    (root / "bad.csv").write_text("feature_id,label\nabc,hello\n")
    cfg = StandardSAEConfig(d_in=7, d_sae=8, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post"))
    SAE.from_dict(cfg.to_dict()).save_model(root / "wrong_sae")
    return {FILE: str(root / "a_file"), MISSING: str(root / "missing.txt"), DIR: str(root / "a_dir"),
            UNDER_FILE: str(root / "a_file" / "sub"), OUT: str(root / "out"), PROMPTS: str(root / "prompts.txt"),
            BAD_CSV: str(root / "bad.csv"), WRONG_SAE: str(root / "wrong_sae")}


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (instead of doing) any model load or demo run: a bad argument must fail before it."""
    from transformer_lens import HookedTransformer

    from r1_plugin.demo import run as demo_run

    loaded: list[str] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        loaded.append("model")
        raise SystemExit(99)

    for name in ("from_pretrained", "from_pretrained_no_processing"):
        monkeypatch.setattr(HookedTransformer, name, fake)
    monkeypatch.setattr(demo_run, "run_demo", fake)
    return loaded


def fill(argv: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for key, value in files.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def assert_one_error_line(err: str, prog: str, words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(prog) and ": error: " in lines[0], lines[0]
    assert words in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=[" ".join(c[0][:3] + c[0][-2:]) for c in CASES])
def test_every_subcommand_refuses_bad_arguments_in_one_line(
    argv: list[str], words: str, files: dict[str, str], no_model_load: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(fill(argv, files)) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err, "r1-plugin", words)
    assert no_model_load == [], "a model was loaded before the bad argument was refused"


@pytest.mark.parametrize(("argv", "words"), DEMO_CASES, ids=[" ".join(c[0]) for c in DEMO_CASES])
def test_the_demo_refuses_bad_arguments_in_one_line(
    argv: list[str], words: str, files: dict[str, str], no_model_load: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from r1_plugin.demo.run import main as demo_main

    assert demo_main(fill(argv, files)) == 2
    assert_one_error_line(capsys.readouterr().err, "python -m r1_plugin.demo", words)
    assert no_model_load == []


def test_the_table_covers_every_subcommand() -> None:
    """Each command `r1-plugin --help` lists (and each action of features / experiment / models) has a row."""
    from r1_plugin.cli import SUBCOMMANDS, build_parser
    from r1_plugin.cli.experiment import EXPERIMENTS

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert commands == set(SUBCOMMANDS)
    seen = {tuple(argv[:2]) for argv, _ in CASES if argv}
    for command in commands:
        assert any(key[0] == command for key in seen), command
    for action in ("search", "show", "download", "merge", "map", "harvest"):
        assert ("features", action) in seen, action
    for name in EXPERIMENTS:
        assert ("experiment", name) in seen, name
    assert ("models", "plan") in seen


def run_process(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env,
                          stdin=subprocess.DEVNULL, timeout=300, cwd=REPO)


CLI = ["-c", "import sys; from r1_plugin.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(("args", "prog", "words"), [
    ([*CLI, *SINKS, "--epsilon", "nan"], "r1-plugin", "epsilon must be a finite number"),
    ([*CLI, "features", "show", "-5", *SHOW_DB], "r1-plugin", ">= 0"),
    ([*CLI, *PLAN[:3], "--memory-per-device", "0"], "r1-plugin", "must be positive"),
    (["-m", "r1_plugin.demo", "--max-new-tokens", "0"], "python -m r1_plugin.demo", ">= 1"),
])
def test_in_real_processes(args: list[str], prog: str, words: str) -> None:
    done = run_process(args)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(done.stderr, prog, words)


def test_a_bug_is_one_line_and_r1_plugin_debug_shows_its_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An exception r1_plugin did not mean to raise: one line that says so (exit 2); R1_PLUGIN_DEBUG=1 re-raises."""
    from r1_plugin.cli import saes

    def broken(args: argparse.Namespace) -> int:
        raise KeyError("oops")

    monkeypatch.setattr(saes, "run", broken)
    monkeypatch.delenv("R1_PLUGIN_DEBUG", raising=False)
    assert main(["saes", "list"]) == 2
    assert_one_error_line(capsys.readouterr().err, "r1-plugin saes", "internal error, KeyError")
    monkeypatch.setenv("R1_PLUGIN_DEBUG", "1")
    with pytest.raises(KeyError, match="oops"):
        main(["saes", "list"])
    assert main(["saes", "list", "--bogus"]) == 2  # usage errors stay one line, with or without the variable
    assert_one_error_line(capsys.readouterr().err, "r1-plugin", "unrecognized arguments")


def test_debug_variable_shows_the_traceback_in_a_real_process() -> None:
    done = run_process([*CLI, "features", "search", "x", "--db-dir", str(REPO / "no-such-folder")],
                       R1_PLUGIN_DEBUG="1")
    assert done.returncode == 1 and "Traceback" in done.stderr and "is not a folder" in done.stderr


def test_a_missing_subcommand_module_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """cli/__init__ no longer skips a command whose module is gone: it says the installation is incomplete."""
    import importlib

    real = importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name == "r1_plugin.cli.saes":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["doctor", "--bogus"]) == 2
    assert_one_error_line(capsys.readouterr().err, "r1-plugin", "module r1_plugin.cli.saes is missing")


def test_deprecated_memory_flag_warns_and_means_memory_per_device(capsys: pytest.CaptureFixture[str]) -> None:
    """`models plan --memory` still works for one release (one warning line), and equals --memory-per-device."""
    from r1_plugin.cli import build_parser

    parser = build_parser("models")
    new = parser.parse_args(PLAN)
    assert capsys.readouterr().err == ""
    old = parser.parse_args([*PLAN[:3], "--memory", "80GB"])
    assert "--memory is deprecated, use --memory-per-device" in capsys.readouterr().err
    assert old.memory_per_device == new.memory_per_device == 80 * 10**9


def test_map_takes_the_release_folder_steer_and_harvest_take() -> None:
    """`features map --sae-path <release folder>` loads it with saes/local.py (it used to ask for cfg.json)."""
    import torch

    from r1_plugin.cli.features import _map_sae
    from r1_plugin.saes.sae_folders import load_sae_from_path

    args = argparse.Namespace(sae_path=Path(S), release=None, sae_id=None, device="cpu")
    sae, source = _map_sae(args)
    assert torch.equal(sae.W_dec, load_sae_from_path(S).W_dec) and source == S
    args.release = "layer_2"  # with --sae-path, the one positional is the SAE id
    assert torch.equal(_map_sae(args)[0].W_dec, sae.W_dec)


def test_sink_flags_and_sink_thresholds_share_one_check(capsys: pytest.CaptureFixture[str]) -> None:
    """`r1-plugin sinks --FLAG X` fails with the very message `SinkThresholds(FLAG=X)` raises in Python."""
    from r1_plugin.sinks import SinkThresholdError, SinkThresholds

    for field, value in (("epsilon", -1.0), ("min_sink_rate", 2.0), ("min_queries", 0), ("min_value", -3.0),
                         ("min_ratio", float("inf")), ("chunk_size", 0)):
        with pytest.raises(SinkThresholdError) as info:
            SinkThresholds(**{field: value})
        for command in (SINKS, EXP_SINKS[:-2] + ["--out", "o"]):
            if field == "chunk_size" and command[0] == "experiment":
                continue  # the sinks experiment runs no chunked scan
            assert main([*command, f"--{field.replace('_', '-')}", str(value)]) == 2
            assert str(info.value) in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_output_folder_is_refused_before_the_work(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([*SINKS, "--out", str(ro / "out")]) == 2
        assert_one_error_line(capsys.readouterr().err, "r1-plugin sinks", "not writable")
        assert main(["features", "merge", str(tmp_path), "-o", str(ro / "x.ddb")]) == 2
        assert_one_error_line(capsys.readouterr().err, "r1-plugin features merge", "not writable")
    finally:
        ro.chmod(0o700)


def test_lock_conflict_is_not_called_damage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A database another process holds: 'another process has the database open', not 'damaged? fetch it again'."""
    import shutil

    db = tmp_path / "acts.ddb"
    shutil.copy(ACTS, db)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True); "
         "time.sleep(120)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        assert main(["features", "show", "0", "--activations", str(db)]) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert_one_error_line(err, "r1-plugin features show", "another process has the database open")
    assert "damaged" not in err
