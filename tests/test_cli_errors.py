"""Every `r1-plugin` failure that comes from bad input is one line on stderr and exit code 2, never a traceback:
usage errors, a bad W&B mode, an unreadable database, a device this machine lacks, a model that does not fit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.cli import main
from r1_plugin.errors import ModelDoesNotFitError, R1PluginError
from r1_plugin.testing.feature_db import build_tiny_feature_db

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`r1-plugin ...` in a fresh process (this checkout first on the path)."""
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    return subprocess.run([sys.executable, "-c", "import sys; from r1_plugin.cli import main; sys.exit(main())", *argv], capture_output=True, text=True,
                          env=full_env, stdin=subprocess.DEVNULL, timeout=300, cwd=REPO)


def assert_one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("r1-plugin") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_feature_db(tmp_path_factory.mktemp("cli_errors"), label_format="sqlite")


def test_in_a_fresh_process_a_bad_wandb_mode_is_one_line() -> None:
    """WANDB_MODE=foo: exit code 2 and only this line on the real stderr (it fails before the model loads)."""
    done = run_cli("sinks", "--model", QWEN, "--prompt", "Hi", WANDB_MODE="foo")
    assert done.returncode == 2
    assert_one_line(done.stderr, "unknown W&B mode 'foo'", "sinks")


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or malformed flag prints one line pointing to --help instead of argparse's usage block."""
    assert main(["steer", "--model", QWEN]) == 2
    assert_one_line(capsys.readouterr().err, "the following arguments are required: --prompt",
                    "(see `r1-plugin steer --help`)")
    assert main(["features", "harvest", "--model", QWEN, "--prompts", __file__, "--out", "o", "--top-k", "0"]) == 2
    assert_one_line(capsys.readouterr().err, "r1-plugin features harvest: error: argument --top-k")
    assert main(["nonsense"]) == 2
    assert_one_line(capsys.readouterr().err, "invalid choice")
    assert main(["steer", "--help"]) == 0
    assert "--first-n-layers" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["steer", "sinks", "harvest"])
def test_bad_wandb_mode_is_refused_before_loading(command: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "foo")
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing",
                        classmethod(lambda cls, *a, **k: pytest.fail("the model loaded before the W&B check")))
    (tmp_path / "p.txt").write_text("hello\n")
    argv = {
        "steer": ["steer", "--direction", "d.pt"],
        "sinks": ["sinks"],
        "harvest": ["features", "harvest", "--sae-path", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                    "--out", str(tmp_path / "out")],
    }[command]
    prompt = [] if command == "harvest" else ["--prompt", "Hi"]
    assert main([*argv, "--model", QWEN, *prompt]) == 2
    assert_one_line(capsys.readouterr().err, "unknown W&B mode 'foo'")


def test_unreadable_databases(tiny_db: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Truncated SQLite labels and DuckDB activations, random bytes, a folder: one line naming the file."""
    for src, suffix in ((tiny_db.labels_path, ".db"), (tiny_db.activations_path, ".ddb")):
        data = src.read_bytes()
        (tmp_path / f"half{suffix}").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.ddb").write_bytes(bytes(range(256)) * 64)
    cases = [
        (["features", "show", "1", "--labels", str(tmp_path / "half.db")], "cannot read the SQLite database"),
        (["features", "search", "wait", "--labels", str(tmp_path / "half.db")], "half.db"),
        (["features", "show", "1", "--activations", str(tmp_path / "half.ddb")], "cannot read the DuckDB database"),
        (["features", "show", "1", "--activations", str(tmp_path / "noise.ddb")], "noise.ddb"),
        (["features", "search", "wait", "--labels", str(tmp_path)], str(tmp_path)),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        assert_one_line(capsys.readouterr().err, words)
    assert main(["features", "show", "1", "--labels", str(tiny_db.labels_path)]) == 0  # the intact file reads


def test_a_model_that_does_not_fit_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The loader's ModelDoesNotFitError (a multi-line plan) is printed as one line by every loading command."""
    plan = "device cuda:0 overflows by 61.2 GB\n  weights 180.0 GB > 141.0 GB\nwould fit: --keep-fp8, or 16 devices"

    def does_not_fit(cls: Any, name: str, **kwargs: Any) -> Any:
        raise ModelDoesNotFitError(plan)

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", classmethod(does_not_fit))
    assert issubclass(ModelDoesNotFitError, R1PluginError)
    direction = tmp_path / "d.pt"
    torch.save({"direction": torch.zeros(8), "hook_name": "blocks.0.hook_resid_post"}, direction)
    for argv in (["steer", "--prompt", "Hi", "--direction", str(direction)], ["sinks", "--prompt", "Hi"]):
        assert main([*argv, "--model", "deepseek-ai/DeepSeek-R1", "--no-wandb"]) == 2
        assert_one_line(capsys.readouterr().err, "overflows by 61.2 GB; weights 180.0 GB > 141.0 GB; would fit")


def test_devices_this_machine_lacks(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, words in ((["--device", "cuda:1"], "0 CUDA device"), (["--n-devices", "4"], "--n-devices 4"),
                         (["--device", "tpu9"], "not a torch device")):
        assert main(["sinks", "--model", QWEN, "--prompt", "Hi", "--no-wandb", *flags]) == 2
        assert_one_line(capsys.readouterr().err, words)
    assert main(["sinks", "--model", QWEN, "--prompt", "Hi", "--n-devices", "0"]) == 2
    assert_one_line(capsys.readouterr().err, "must be >= 1")


def test_a_model_missing_from_the_offline_cache_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """gpt2 was never cached in the tests' offline HF cache: TransformerLens's own loader cannot fetch it."""
    assert main(["sinks", "--model", "gpt2", "--prompt", "Hi", "--no-wandb", "--device", "cpu"]) == 2
    assert_one_line(capsys.readouterr().err)


def test_a_bad_direction_file_fails_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing",
                        classmethod(lambda cls, *a, **k: pytest.fail("the model loaded before the direction")))
    (tmp_path / "junk.pt").write_text("not a tensor")
    for path, words in ((tmp_path / "missing.pt", "does not exist"), (tmp_path / "junk.pt", "weights-only")):
        assert main(["steer", "--model", QWEN, "--prompt", "Hi", "--direction", str(path), "--no-wandb"]) == 2
        assert_one_line(capsys.readouterr().err, words)
