"""`make demo` shows the four findings experiments: their tables, plots and what they show on the tiny R1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1_plugin.demo.run import DemoConfig, build_parser, config_from_args, run_demo

PROMPTS = ["What is 7 + 8?", "Which is larger, 3 or 9?"]
NAMES = ("prefix_gating", "oversteer", "segments", "sinks")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("demo_experiments")
    result = run_demo(DemoConfig(prompts=PROMPTS, out=out, wandb_dir=out / "wb", sweep=False, max_new_tokens=60),
                      log=lambda line: None)
    return result, out


def test_demo_report_has_the_four_experiments(demo: tuple) -> None:
    result, out = demo
    report = (out / "report.md").read_text()
    assert "## Goodfire's findings on this model" in report
    for name in NAMES:
        assert f"### {name}" in report
        assert f"![{name}](experiments/{name}/{name}.png)" in report
        assert (out / "experiments" / name / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        payload = json.loads((out / "experiments" / name / "results.json").read_text())
        assert payload["name"] == name
    assert result.files["sinks_plot"] == out / "experiments" / "sinks" / "sinks.png"


def test_demo_observations_are_read_off_the_numbers(demo: tuple) -> None:
    _, out = demo
    report = (out / "report.md").read_text()
    table = json.loads((out / "experiments" / "prefix_gating" / "results.json").read_text())["table"]
    for cond in ("first_response_token", "response_prefix_only", "after_response_prefix", "thinking_only"):
        changed = sum(bool(r["diverged"]) for r in table if r["condition"] == cond)
        assert f"{cond}: {changed}/{len(PROMPTS)}" in report
    sinks = json.loads((out / "experiments" / "sinks" / "results.json").read_text())
    bos = next(r for r in sinks["summary"] if r["role"] == "bos" and r["metric"] == "sink_rate")
    assert f"Mean sink rate at BOS {bos['mean']:.2f}" in report
    segments = json.loads((out / "experiments" / "segments" / "results.json").read_text())
    top_js = max(r["js_divergence"] for r in segments["summary"])
    assert f"to {top_js:.2f}" in report


def test_demo_logs_the_experiments_to_wandb(demo: tuple) -> None:
    from r1_plugin.tracking import read_offline_run

    result, _ = demo
    run = read_offline_run(result.wandb_run_dir)
    assert run.exit_code == 0
    assert {f"{n}/summary" for n in NAMES} <= set(run.tables)


def test_no_experiments_flag() -> None:
    assert config_from_args(build_parser().parse_args(["--no-experiments"])).experiments is False
    assert config_from_args(build_parser().parse_args([])).experiments is True
