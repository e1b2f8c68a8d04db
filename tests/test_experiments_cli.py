"""`r1-plugin experiment NAME`: every option documented in --help, and a real run of each experiment on the
embedded tiny R1 into a temporary --out (report.md, results.json, the PNG, the W&B run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from r1_plugin.cli import build_parser, main
from r1_plugin.cli.experiment import EXPERIMENTS
from r1_plugin.demo import assets

TINY = ["--model", str(assets.MODEL_DIR), "--device", "cpu", "--dtype", "float32"]  # the embedded R1, by path
SAE = ["--sae-path", str(assets.SAE_DIR), "--sae-id", "layer_2"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_assets(hf_cache: Path) -> None:
    """The embedded tiny R1 and its SAE load by path from the package: nothing to install."""


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_help_documents_every_option(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", name, "--help"]) == 0
    text = capsys.readouterr().out
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions[0].choices["experiment"]._actions
               if a.dest == "experiment")
    actions = [a for a in sub.choices[name]._actions if a.option_strings]
    options = [s for a in actions for s in a.option_strings if s.startswith("--")]
    assert len(options) > 12
    for action in actions:
        assert action.help and len(action.help) > 8, f"{action.option_strings} has no help"
        option = action.option_strings[-1]
        assert re.search(rf"^\s+(-\w, )?{re.escape(option)}\b", text, re.M), f"{option} is not in --help"
    for flag in ("--model", "--dtype", "--device", "--n-devices", "--first-n-layers", "--keep-fp8", "--out",
                 "--wandb-mode", "--no-wandb"):
        assert flag in options
    if name != "sinks":
        assert "--sae-device" in options


def _check_outputs(out: Path, name: str) -> dict:
    report = (out / "report.md").read_text()
    assert report.startswith(f"# {name}") and "## Per prompt" in report
    assert (out / f"{name}.png").read_bytes().startswith(PNG)
    payload = json.loads((out / "results.json").read_text())
    assert payload["name"] == name and payload["table"] and payload["summary"]
    return payload


def test_prefix_gating_cli(tiny_assets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from r1_plugin.tracking import read_offline_run

    out = tmp_path / "pg"
    code = main(["experiment", "prefix-gating", *TINY, *SAE, "--feature", "398", "--strength", "21",
                 "--prompt", "What is 7 + 8?", "--max-new-tokens", "30", "--target-text", "Wait",
                 "--n-boot", "50", "--out", str(out), "--wandb-mode", "offline", "--wandb-dir", str(tmp_path / "wb")])
    assert code == 0
    payload = _check_outputs(out, "prefix_gating")
    conditions = [r["condition"] for r in payload["table"]]
    assert conditions == ["unsteered", "first_response_token", "response_prefix_only", "after_response_prefix",
                          "thinking_only"]
    assert payload["config"]["strength"] == 21.0 and payload["config"]["target_text"] == "Wait"
    printed = capsys.readouterr().out
    assert "expression_effect" in printed and "wrote report.md" in printed
    runs = list((tmp_path / "wb").rglob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run.exit_code == 0 and "prefix_gating/summary" in run.tables
    assert run.config["model"] == str(assets.MODEL_DIR)


def test_oversteer_cli(tiny_assets: None, tmp_path: Path) -> None:
    out = tmp_path / "os"
    assert main(["experiment", "oversteer", *TINY, *SAE, "--feature", "398", "--strengths", "0,56",
                 "--prompt", "What is 7 + 8?", "--max-new-tokens", "30", "--n-boot", "50", "--out", str(out),
                 "--no-wandb"]) == 0
    payload = _check_outputs(out, "oversteer")
    assert [r["strength"] for r in payload["table"]] == [0.0, 0.0, 56.0]  # baseline, then the sweep
    assert payload["config"]["primary_metric"] == "expression"


def test_oversteer_cli_with_a_direction_file(tiny_assets: None, tmp_path: Path) -> None:
    import torch

    sae = assets.load_sae()
    path = tmp_path / "dir.pt"
    torch.save({"direction": sae.W_dec[398].detach().clone(), "hook_name": "blocks.2.hook_resid_post"}, path)
    out = tmp_path / "os-dir"
    assert main(["experiment", "oversteer", *TINY, "--direction", str(path), "--strengths", "0,56", "--gate",
                 "thinking", "--prompt", "What is 7 + 8?", "--max-new-tokens", "30", "--n-boot", "20",
                 "--out", str(out), "--no-wandb"]) == 0
    payload = _check_outputs(out, "oversteer")
    assert payload["config"]["steering"] == "direction at blocks.2.hook_resid_post"
    assert payload["config"]["gate"].startswith("(AfterResponsePrefix")


def test_segments_cli(tiny_assets: None, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 7 + 8?\n\nWhich is larger, 3 or 9?\n")
    assert main(["experiment", "segments", *TINY, *SAE, "--prompts-file", str(prompts), "--max-new-tokens", "80",
                 "--top-k", "3", "--out", str(out), "--no-wandb"]) == 0
    payload = _check_outputs(out, "segments")
    assert payload["config"]["n_prompts"] == 2
    segs = {r["segment"]: r["n_tokens"] for r in payload["tables"]["segments"]}
    assert all(segs[s] > 0 for s in ("prompt", "response_prefix", "thinking", "answer"))
    assert len(payload["tables"]["top_features"]) == 4 * 3


def test_sinks_cli_and_errors(tiny_assets: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sinks"
    assert main(["experiment", "sinks", *TINY, "--prompt", "What is 7 + 8?", "--max-new-tokens", "40",
                 "--epsilon", "0.2", "--prefix-max-tokens", "32", "--n-boot", "50", "--out", str(out),
                 "--no-wandb"]) == 0
    payload = _check_outputs(out, "sinks")
    assert [r["role"] for r in payload["table"]] == ["bos", "prefix_end", "thinking_start"]
    assert payload["config"]["epsilon"] == 0.2 and payload["config"]["prefix_max_tokens"] == 32
    capsys.readouterr()
    assert main(["experiment", "sinks", *TINY, "--out", str(out), "--no-wandb"]) == 2
    assert "give at least one --prompt" in capsys.readouterr().err
    assert main(["experiment", "prefix-gating", *TINY, "--prompt", "x", "--out", str(out), "--no-wandb"]) == 2
    assert "exactly one" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_model_flags_mean_the_python_keywords(name: str) -> None:
    """--dtype/--device/--n-devices/--first-n-layers/--keep-fp8 become exactly those from_pretrained keywords."""
    from r1_plugin.cli._model_args import model_kwargs_from_args

    flags = ["--dtype", "bfloat16", "--device", "cuda", "--n-devices", "2", "--first-n-layers", "38",
             "--keep-fp8"]
    sae = ["--sae-release", "r", "--sae-id", "i"] if name == "segments" else []
    args = build_parser().parse_args(["experiment", name, "--model", "deepseek-ai/DeepSeek-R1", "--out", "o",
                                      *sae, *flags])
    assert model_kwargs_from_args(args) == dict(dtype="bfloat16", device="cuda", n_devices=2, first_n_layers=38,
                                                keep_fp8=True)
    bare = build_parser().parse_args(["experiment", name, "--model", "m", "--out", "o", *sae])
    assert model_kwargs_from_args(bare) == {}
