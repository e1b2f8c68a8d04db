"""r1_plugin.tracking: what a run logs, read back from the offline run directory (no API key, no network)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from wandb_oracle import exit_record_written, read_wandb_run, wait_for_run_file  # noqa: E402

from r1_plugin.tracking import (  # noqa: E402
    GENERATION_COLUMNS,
    RunLogger,
    TrackingError,
    add_tracking_args,
    read_offline_run,
    resolve_mode,
    start_run,
    tracker_from_args,
)

REPO = Path(__file__).resolve().parents[1]


def run_dir_id(run_dir: Path) -> str:
    """The run id at the end of an offline-run-<time>-<id> folder name."""
    return run_dir.name.rsplit("-", 1)[-1]


def _assert_syncable_layout(run_dir: Path) -> None:
    """The layout `wandb sync <run_dir>` uploads: offline-run-<time>-<id>/ with run-<id>.wandb, files/, logs/."""
    assert run_dir.name.startswith("offline-run-"), run_dir
    run_id = run_dir_id(run_dir)
    assert (run_dir / f"run-{run_id}.wandb").is_file()
    assert (run_dir / "files").is_dir()
    assert (run_dir / "logs").is_dir()
    assert run_dir.parent.name == "wandb"


def test_everything_logged_is_in_the_offline_run(tmp_path: Path) -> None:
    """Config (with versions, seed, kind), metrics, generations, curves, images and activations all land on disk."""
    config = {
        "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "hook": "blocks.3.hook_resid_post",
        "seed": 7,
    }
    rows = [
        {
            "prompt": "Why is the sky blue?",
            "unsteered": "Rayleigh",
            "steered": "Pirates!",
            "gate_position": 12,
            "strength": 8.0,
            "feature": 123,
        },
        {"prompt": "2+2?", "steered": "4, arr", "strength": 8.0},
    ]
    sweep = pd.DataFrame({"strength": [4.0, 0.0, 2.0], "kl": [0.5, 0.0, 0.2], "on_topic": [0.1, 0.9, 0.5]})
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "plot.png"
    fig.savefig(png)
    with start_run("steer", config, mode="offline", dir=tmp_path, name="roundtrip", tags=["test"]) as tracker:
        assert tracker.mode == "offline" and tracker.enabled
        tracker.log_config({"strength": 8.0, "gate": "think"})
        tracker.log_metrics({"kl": 0.25, "loss": 1.5})
        tracker.log_metrics({"kl": 0.5}, step=3)
        tracker.log_generations(rows)
        tracker.log_curve("sweep", sweep, x="strength", ys=["kl", "on_topic"])
        tracker.log_figure("sink_plot", fig, caption="a line")
        tracker.log_figure("sink_png", png)
        tracker.log_heatmap(
            "sink_heatmap", [[0.1, 0.9], [0.4, 0.2], [0.0, 1.0]], xlabel="head", ylabel="layer"
        )
        tracker.log_feature_activations(
            "acts", ["<s>", "The", " sky"], [[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]], feature_ids=[123, 7]
        )
        tracker.log_summary({"best_strength": 4.0})
        run_dir = tracker.run_dir
    plt.close(fig)
    assert tracker.finished and tracker.exit_code == 0
    assert run_dir is not None and run_dir.parent == tmp_path / "wandb"
    _assert_syncable_layout(run_dir)

    run = read_offline_run(run_dir)
    assert (run_dir / "files" / "r1_plugin-log.jsonl").is_file()  # the plain copy, synced with the run
    assert run.exit_code == 0
    assert run.project == "r1-plugin"
    assert run.config["model"] == config["model"] and run.config["hook"] == config["hook"]
    assert run.config["seed"] == 7 and run.config["kind"] == "steer"
    assert run.config["strength"] == 8.0 and run.config["gate"] == "think"
    versions = run.config["versions"]
    assert set(versions) == {"r1_plugin", "torch", "transformer_lens", "sae_lens", "transformers", "wandb"}
    import sae_lens
    import torch

    assert versions["torch"] == torch.__version__ and versions["sae_lens"] == sae_lens.__version__
    assert run.metric("kl") == [0.25, 0.5] and run.metric("loss") == [1.5]
    assert run.summary["best_strength"] == 4.0

    gens = run.table("generations")
    assert gens["columns"][: len(GENERATION_COLUMNS)] == list(GENERATION_COLUMNS)
    assert gens["columns"][len(GENERATION_COLUMNS) :] == ["feature"]
    assert gens["data"][0] == ["Why is the sky blue?", "Rayleigh", "Pirates!", 12, 8.0, 123]
    assert gens["data"][1] == ["2+2?", None, "4, arr", None, 8.0, None]

    curve = run.table("sweep")
    assert curve["columns"] == ["strength", "kl", "on_topic"]
    assert [r[0] for r in curve["data"]] == [0.0, 2.0, 4.0]  # sorted by x
    assert "sweep_chart_table" in run.tables  # the line chart's data

    acts = run.table("acts")
    assert acts["columns"] == ["position", "token", "feature_123", "feature_7"]
    assert acts["data"][1] == [1, "The", 2.0, 0.0]

    images = [f for f in run.files if f.startswith("media/images/")]
    for key in ("sink_plot", "sink_png", "sink_heatmap"):
        assert any(Path(f).name.startswith(f"{key}_") and f.endswith(".png") for f in images), (key, images)
        assert run.summary[f"{key}/_type"] == "image-file"
    assert any(f.startswith("media/html/acts_html_") for f in run.files)

    # The plain copy agrees with what wandb itself wrote (decoded by the test-only oracle).
    wandb_run = read_wandb_run(run_dir)
    assert wandb_run.exit_code == 0 and wandb_run.run_id == run.run_id == run_dir_id(run_dir)
    assert wandb_run.project == run.project
    assert {k: v for k, v in wandb_run.config.items() if k != "_wandb"} == run.config  # _wandb: its bookkeeping

    def logged_keys(row: dict) -> set[str]:
        return {key.split("/")[0] for key in row if not key.startswith("_")}

    assert [row["_step"] for row in wandb_run.history] == [row["_step"] for row in run.history]
    assert [logged_keys(row) for row in wandb_run.history] == [logged_keys(row) for row in run.history]
    assert wandb_run.metric("kl") == run.metric("kl") and wandb_run.metric("loss") == run.metric("loss")
    assert wandb_run.summary["best_strength"] == run.summary["best_strength"]
    for key in ("sink_plot", "sink_png", "sink_heatmap", "acts_html"):  # same media file, same name
        assert wandb_run.summary[f"{key}/path"] == run.summary[f"{key}/path"]
    assert wandb_run.tables == run.tables


def test_exception_inside_with_finishes_the_run_as_failed(tmp_path: Path) -> None:
    """An error in the tool still leaves a finished run (exit code 1) holding everything logged before it."""
    with pytest.raises(RuntimeError, match="boom"):
        with start_run("sweep", {"feature": 5}, mode="offline", dir=tmp_path) as tracker:
            tracker.log_metrics({"kl": 0.1})
            tracker.log_table("partial", [{"strength": 1.0, "kl": 0.1}])
            raise RuntimeError("boom")
    assert tracker.exit_code == 1
    run = read_offline_run(tracker.run_dir)
    assert run.exit_code == 1
    assert run.metric("kl") == [0.1]
    assert run.table("partial") == {"columns": ["strength", "kl"], "data": [[1.0, 0.1]]}
    assert run.summary["error"] == "RuntimeError: boom"
    _assert_syncable_layout(tracker.run_dir)
    # `wandb sync` accepts the failed run as it is (dry run: nothing is uploaded, no key or network needed).
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "sync", "--dry-run", str(tracker.run_dir)],
        env=_child_env(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Would sync 1 run(s)" in out.stdout + out.stderr
    assert f"run-{run_dir_id(tracker.run_dir)}.wandb" in out.stdout + out.stderr


def test_keyboard_interrupt_inside_with_finishes_the_run(tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt) finishes the run with exit code 255 and keeps what was logged."""
    with pytest.raises(KeyboardInterrupt):
        with start_run("sinks", mode="offline", dir=tmp_path) as tracker:
            tracker.log_metrics({"sink_rate": 0.75})
            raise KeyboardInterrupt
    run = read_offline_run(tracker.run_dir)
    assert run.exit_code == 255 and run.metric("sink_rate") == [0.75]


def _child_env(tmp_path: Path) -> dict[str, str]:
    """A child environment with no W&B key, no netrc, no WANDB_MODE: the out-of-the-box situation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    return env


def test_out_of_the_box_child_logs_offline_and_survives_a_real_sigint(tmp_path: Path) -> None:
    """No key, no WANDB_MODE, no terminal: the run starts offline without prompting or hanging; a real SIGINT
    mid-run finishes it (exit code 255) with nothing logged lost."""
    script = textwrap.dedent(
        """
        import time
        from r1_plugin.tracking import start_run
        with start_run("steer", {"feature": 1}) as tracker:
            tracker.log_generations([{"prompt": "p", "steered": "s"}])
            tracker.log_metrics({"kl": 0.3})
            print("READY", tracker.mode, tracker.run_dir, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_child_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()  # blocks until the run is started (or the child died)
        assert line.startswith("READY"), (line, proc.stderr.read() if proc.poll() is not None else "")
        assert time.monotonic() - t0 < 120
        _, mode, run_dir = line.split(maxsplit=2)
        assert mode == "offline"  # no API key anywhere: offline without asking
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # the KeyboardInterrupt propagates after finishing
    run_path = Path(run_dir.strip())
    assert run_path.parent == tmp_path / "wandb"  # WANDB_DIR honoured
    run = read_offline_run(run_path)
    assert run.exit_code == 255
    assert run.metric("kl") == [0.3]
    assert run.table("generations")["data"] == [["p", None, "s", None, None]]


def test_disabled_mode_is_a_no_op(tmp_path: Path) -> None:
    """mode='disabled' logs nothing, creates no directory, and every method is callable."""
    with start_run("steer", {"a": 1}, mode="disabled", dir=tmp_path / "never") as tracker:
        assert not tracker.enabled and tracker.run is None and tracker.run_dir is None
        tracker.log_config({"b": 2})
        tracker.log_metrics({"x": 1.0})
        tracker.log_generations([{"prompt": "p"}])
        tracker.log_curve("c", pd.DataFrame({"x": [1], "y": [2]}), "x", "y")
        tracker.log_heatmap("h", [[1.0]])
        tracker.log_feature_activations("f", ["a"], [1.0])
    assert tracker.finished and not (tmp_path / "never").exists()


def test_resolve_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Explicit mode wins, then WANDB_MODE; online needs an API key (else offline); unknown modes are refused."""
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode() == "offline"
    assert resolve_mode("online") == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() == "disabled"
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_mode() == "offline"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode() == "online"
    with pytest.raises(TrackingError, match="unknown W&B mode"):
        resolve_mode("cloud")


def test_cli_flags(tmp_path: Path) -> None:
    """add_tracking_args/tracker_from_args: --no-wandb disables, --wandb-dir/--wandb-project pick where it goes."""
    parser = add_tracking_args(argparse.ArgumentParser())
    parser.add_argument("--seed", type=int, default=0)
    off = tracker_from_args(parser.parse_args(["--no-wandb"]), "steer", {"a": 1})
    assert isinstance(off, RunLogger) and off.mode == "disabled"
    off.finish()
    with pytest.raises(SystemExit):
        parser.parse_args(["--wandb-mode", "cloud"])
    args = parser.parse_args(
        [
            "--wandb-mode",
            "offline",
            "--wandb-dir",
            str(tmp_path),
            "--wandb-project",
            "proj",
            "--wandb-name",
            "n1",
            "--wandb-tags",
            "a",
            "b",
            "--seed",
            "42",
        ]
    )
    with tracker_from_args(args, "sinks", {"model": "m"}) as tracker:
        tracker.log_metrics({"x": 1})
    run = read_offline_run(tracker.run_dir)
    assert tracker.run_dir.parent == tmp_path / "wandb"
    assert run.project == "proj" and run.config["seed"] == 42 and run.config["kind"] == "sinks"


def test_bad_arguments_say_what_is_wrong(tmp_path: Path) -> None:
    """Clear errors for rows without a prompt, mismatched activation shapes, unknown columns, missing files."""
    with start_run("features", mode="offline", dir=tmp_path) as tracker:
        with pytest.raises(TrackingError, match="no 'prompt'"):
            tracker.log_generations([{"steered": "x"}])
        with pytest.raises(TrackingError, match="one per token"):
            tracker.log_feature_activations("a", ["x", "y"], [1.0, 2.0, 3.0])
        with pytest.raises(TrackingError, match="not in the DataFrame"):
            tracker.log_curve("c", pd.DataFrame({"x": [1]}), "x", ["y"])
        with pytest.raises(TrackingError, match="no image file"):
            tracker.log_figure("f", tmp_path / "missing.png")
    with pytest.raises(TrackingError, match="not a W&B run directory"):
        read_offline_run(tmp_path)


def test_large_run_file_reads_back_across_blocks(tmp_path: Path) -> None:
    """A long run reads back fully from the plain copy, and agrees with W&B's run file (many 32 KiB blocks).

    wandb completes its run file after `finish` returns (the stream is closed asynchronously), so the oracle
    waits for the exit record; the plain copy needs no wait.
    """
    with start_run("sweep", mode="offline", dir=tmp_path) as tracker:
        for step in range(600):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "note": "x" * 200}, step=step)
    run_file = next(tracker.run_dir.glob("run-*.wandb"))
    assert wait_for_run_file(tracker.run_dir) and exit_record_written(run_file)
    assert run_file.stat().st_size > 3 * 32768
    run = read_offline_run(tracker.run_dir)
    assert run.exit_code == 0
    assert run.metric("loss") == [1.0 / (s + 1) for s in range(600)]
    assert read_wandb_run(tracker.run_dir).metric("loss") == run.metric("loss")


def test_plain_copy_survives_a_cut_last_line(tmp_path: Path) -> None:
    """A process killed mid-write leaves a cut last line: it is skipped; a corrupt line before the end is an error."""
    with start_run("steer", {"feature": 3}, mode="offline", dir=tmp_path) as tracker:
        tracker.log_metrics({"kl": 0.5})
        tracker.log_metrics({"kl": 0.75})
    plain = tracker.plain_log
    assert plain is not None and plain.parent == tracker.run_dir / "files"
    lines = plain.read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["start", "log", "log", "exit"]
    plain.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:5])  # the exit record cut short
    run = read_offline_run(tracker.run_dir)
    assert run.exit_code is None and run.metric("kl") == [0.5, 0.75] and run.config["feature"] == 3
    plain.write_text("\n".join([lines[0], lines[1][:5], *lines[2:]]) + "\n")
    with pytest.raises(TrackingError, match="line 2 is not JSON"):
        read_offline_run(tracker.run_dir)


def test_plain_copy_steps_match_wandb(tmp_path: Path) -> None:
    """Rows at one step merge and a step already passed is dropped, exactly as in W&B's own run file."""
    with start_run("sweep", mode="offline", dir=tmp_path) as tracker:
        tracker.log_metrics({"a": 1})
        tracker.log_metrics({"a": 2}, step=5)
        tracker.log_metrics({"b": 3})  # joins step 5
        tracker.log_metrics({"a": 4}, step=2)  # behind the current step: W&B ignores it
        tracker.log_metrics({"a": 5}, step=7)
        tracker.log_metrics({"c": 6}, step=7)
    expected = [{"_step": 0, "a": 1}, {"_step": 5, "a": 2, "b": 3}, {"_step": 7, "a": 5, "c": 6}]

    def rows(run: object) -> list[dict]:
        return [{k: v for k, v in row.items() if k in ("_step", "a", "b", "c")} for row in run.history]

    assert rows(read_offline_run(tracker.run_dir)) == expected
    assert rows(read_wandb_run(tracker.run_dir)) == expected


def test_old_tracker_name_warns_and_is_the_run_logger() -> None:
    """`Tracker` (renamed `RunLogger`: steering and sinks have trackers too) still imports, with a DeprecationWarning."""
    import r1_plugin.tracking as tracking

    with pytest.warns(DeprecationWarning, match="RunLogger"):
        from r1_plugin.tracking import Tracker
    assert Tracker is RunLogger
    with pytest.warns(DeprecationWarning, match="SequenceTracker"):
        assert tracking.Tracker is RunLogger
    with pytest.raises(AttributeError, match="no attribute 'Trackr'"):
        tracking.Trackr  # noqa: B018


def test_split_modules_keep_one_job_each() -> None:
    """The tracking package: the run logger, rendering, CLI flags and the offline reader live in their own modules,
    and every public name is still importable from `r1_plugin.tracking`."""
    import r1_plugin.tracking as tracking
    from r1_plugin.tracking import cli_args, mode, offline, plain, render, run_logger

    assert tracking.start_run is run_logger.start_run and tracking.RunLogger is run_logger.RunLogger
    assert tracking.read_offline_run is offline.read_offline_run and tracking.OfflineRun is offline.OfflineRun
    assert tracking.add_tracking_args is cli_args.add_tracking_args and tracking.resolve_mode is mode.resolve_mode
    assert tracking.PLAIN_LOG == plain.PLAIN_LOG == "r1_plugin-log.jsonl"
    html = render.activation_html(["a", "<b>"], __import__("numpy").array([[0.0], [2.0]]), ["feature_7"])
    assert "&lt;b&gt;" in html and "rgba(255,120,0,1.000)" in html and "rgba(255,120,0,0.000)" in html
    for name in tracking.__all__:
        assert getattr(tracking, name) is not None
    with pytest.raises(TrackingError, match="2-D"):
        render.heatmap_figure([1.0, 2.0])


def test_failed_online_start_falls_back_offline_but_a_bug_propagates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only W&B's own errors (no network, bad key), OSError and timeouts mean "log offline"; anything else is a bug."""
    import wandb

    real_init = wandb.init

    def failing(error: Exception):
        def init(*args, mode: str, **kwargs):
            if mode == "online":
                raise error
            return real_init(*args, mode=mode, **kwargs)

        return init

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(wandb, "init", failing(wandb.errors.CommError("network is unreachable")))
    with pytest.warns(UserWarning, match="online start failed .*network is unreachable.*logging offline"):
        run = start_run("steer", mode="online", dir=tmp_path)
    with run:
        assert run.mode == "offline" and run.run_dir is not None
    assert read_offline_run(run.run_dir).exit_code == 0
    monkeypatch.setattr(wandb, "init", failing(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError, match="a bug"):
        start_run("steer", mode="online", dir=tmp_path)
