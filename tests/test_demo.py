"""`python -m r1_plugin.demo` end to end, in-process, offline, on the embedded tiny R1 (the session's temp HF cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from r1_plugin.demo import assets
from r1_plugin.demo.run import (
    GENERATION_COLUMNS,
    DemoConfig,
    DemoError,
    build_parser,
    config_from_args,
    count_backtracks,
    first_divergence,
    run_demo,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["What is 7 + 8?", "Which is larger, 3 or 9?"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, list[str]]:
    """One demo run on two prompts (module-scoped: a few tens of seconds on 2 CPU cores)."""
    out = tmp_path_factory.mktemp("demo_out")
    lines: list[str] = []
    result = run_demo(DemoConfig(prompts=PROMPTS, out=out, wandb_dir=out / "wb"), log=lines.append)
    return result, out, lines


def test_demo_loads_the_embedded_assets_by_path(demo: tuple) -> None:
    """The model and SAE came from the package folder (nothing was written to the HF cache), through
    `from_pretrained(<folder>)` and `SAE.load_from_disk`."""
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert not list(cache.glob("models--r1-plugin--*")), "the demo wrote its assets into the HF cache"
    result, _, lines = demo
    assert result.hook_name == assets.SAE_HOOK
    assert any(f"loaded {assets.MODEL_DIR}" in line for line in lines)


def test_demo_runs_with_an_empty_hf_cache_and_never_tries_the_hub(tmp_path: Path, monkeypatch) -> None:
    """With HF_HUB_OFFLINE, an empty cache and every huggingface_hub download function raising, the demo's model
    and SAE load and generate (the hub is never asked)."""
    import huggingface_hub
    import huggingface_hub.file_download as file_download
    import transformers.utils.hub as transformers_hub

    calls: list[str] = []

    def refuse(name: str):
        def hub_call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"the demo called huggingface_hub.{name}{args}")
        return hub_call

    empty = tmp_path / "empty_cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module in (huggingface_hub, file_download):
        for name in ("hf_hub_download", "snapshot_download", "try_to_load_from_cache"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse(name))
    for name in ("cached_file", "cached_files"):
        if hasattr(transformers_hub, name):
            original = getattr(transformers_hub, name)

            def guarded(path_or_repo_id, *args, _original=original, _name=name, **kwargs):
                if not Path(str(path_or_repo_id)).is_dir():
                    calls.append(_name)
                    raise AssertionError(f"transformers asked the hub for {path_or_repo_id}")
                return _original(path_or_repo_id, *args, **kwargs)

            monkeypatch.setattr(transformers_hub, name, guarded)
    result = run_demo(DemoConfig(prompts=PROMPTS[:1], out=tmp_path / "out", wandb_dir=tmp_path / "wb",
                                 max_new_tokens=40, sweep=False), log=lambda _: None)
    assert calls == []
    assert result.generations[0]["unsteered"].startswith("Okay, so ")
    assert list(empty.iterdir()) == []


def test_feature_is_found_by_label_in_the_feature_database(demo: tuple) -> None:
    """The default feature search ('backtracking') picks a labelled feature and a strength from its examples."""
    result, _, _ = demo
    assert "backtracking" in result.feature_label
    assert result.strength > 0


def test_steering_changes_the_text_only_after_the_response_prefix(demo: tuple) -> None:
    """Unsteered and steered share every token up to the gate; the gate opens after 'Okay, so ... .'."""
    result, _, _ = demo
    assert [r["prompt"] for r in result.generations] == PROMPTS
    changed = 0
    for row in result.generations:
        assert row["unsteered"].startswith("Okay, so ")
        gate = row["gate_position"]
        assert gate is not None and gate > row["prompt_tokens"]
        if row["first_divergence"] is not None:
            changed += 1
            # Steering at position p first changes the token sampled at p + 1.
            assert row["first_divergence"] > gate
        # The response prefix (first sentence) is the same in both.
        prefix = row["unsteered"].split(".")[0]
        assert row["steered"].startswith(prefix)
    assert changed >= 1, "steering changed no generation"


def test_report_and_plots_are_written(demo: tuple) -> None:
    """report.md/.json and three PNG plots land in the output folder."""
    import json

    result, out, _ = demo
    report = (out / "report.md").read_text()
    for heading in ("## Unsteered vs steered", "## Strength sweep", "## Attention sinks around the end"):
        assert heading in report
    assert f"feature {result.feature_id}: {result.feature_label}" in report and "heuristic" in report
    for name in ("sinks_heatmap.png", "feature_activations.png", "steering_sweep.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    payload = json.loads((out / "report.json").read_text())
    assert payload["feature_id"] == result.feature_id
    assert payload["sinks"]["prefix_end"] is not None
    assert payload["sinks"]["window"], "no sink numbers around the prefix end"
    assert any(w["role"] == "prefix_end" for w in payload["sinks"]["window"])
    sweep = payload["sweep"]
    assert [round(r["strength"] / result.strength, 3) for r in sweep] == [0.0, 0.5, 1.0, 2.0, 4.0]


def test_wandb_offline_run_holds_the_tables_figures_and_summary(demo: tuple) -> None:
    """The offline W&B run (under --wandb-dir) has the generations table with the expected columns, etc."""
    from r1_plugin.tracking import read_offline_run

    result, out, _ = demo
    assert result.wandb_run_dir is not None
    assert Path(result.wandb_run_dir).is_relative_to(out / "wb")
    run = read_offline_run(result.wandb_run_dir)
    assert run.exit_code == 0
    table = run.table("generations")
    assert table["columns"][: len(GENERATION_COLUMNS)] == list(GENERATION_COLUMNS)
    assert len(table["data"]) == len(PROMPTS)
    assert [row[0] for row in table["data"]] == PROMPTS
    assert set(run.tables) >= {"generations", "sweep", "sinks", "feature_examples"}
    assert run.config["feature_id"] == result.feature_id
    assert run.config["sae_release"] == assets.SAE_NAME
    assert run.summary["feature_label"] == result.feature_label
    images = [f for f in run.files if f.endswith(".png")]
    assert len(images) >= 3, run.files


def test_helpers() -> None:
    """first_divergence and count_backtracks on hand-made inputs."""
    import torch

    a = torch.tensor([[1, 2, 3, 4]])
    assert first_divergence(a, a) is None
    assert first_divergence(a, torch.tensor([[1, 2, 9, 4]])) == 2
    assert first_divergence(a, torch.tensor([[1, 2, 3]])) == 3
    assert count_backtracks("Okay.\n\nWait, no.\n\nWait, yes.\n</think>\n\nWait") == 2


def test_cli_options_for_a_real_r1() -> None:
    """The options that point the demo at R1 + Goodfire's SAE map onto DemoConfig (not the embedded model)."""
    args = build_parser().parse_args([
        "--model", "deepseek-ai/DeepSeek-R1", "--sae-release", "goodfire-deepseek-r1-logic", "--sae-id", "layer_37",
        "--feature", "26850", "--strength", "8", "--prompt", "Hi", "--device", "cuda", "--dtype", "bfloat16",
        "--first-n-layers", "38", "--out", "x", "--features-labels", str(assets.FEATURES_LABELS),
    ])
    cfg = config_from_args(args)
    assert not cfg.embedded and cfg.strength == 8.0 and cfg.prompts == ["Hi"] and cfg.first_n_layers == 38
    assert cfg.features_labels == assets.FEATURES_LABELS and cfg.out == Path("x")
    assert DemoConfig().embedded and DemoConfig(model=str(assets.MODEL_DIR)).embedded
    assert not DemoConfig(model="tiny-r1").embedded  # no name means the embedded model: only its folder does


def test_keep_fp8_and_sae_device_reach_the_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    """--keep-fp8 / --n-devices reach from_pretrained as its keywords; --sae-device is where the SAE loads."""
    from transformer_lens import HookedTransformer

    from r1_plugin.demo import run as demo_run

    args = build_parser().parse_args(["--model", "deepseek-ai/DeepSeek-R1", "--keep-fp8", "--n-devices", "8",
                                      "--device", "cuda", "--dtype", "bfloat16", "--sae-device", "cpu"])
    cfg = config_from_args(args)
    assert cfg.keep_fp8 and cfg.n_devices == 8 and cfg.sae_device == "cpu"
    seen: dict = {}

    class Stub:
        def eval(self) -> Stub:
            return self

    def fake(name: str, **kwargs: object) -> Stub:
        seen.update(name=name, **kwargs)
        return Stub()

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", fake)
    demo_run.load_model(cfg)
    assert seen == {"name": "deepseek-ai/DeepSeek-R1", "device": "cuda", "dtype": "bfloat16", "n_devices": 8,
                    "keep_fp8": True}
    sae = demo_run.load_sae(DemoConfig(device="meta", sae_device="cpu"))  # the embedded SAE on --sae-device
    assert sae.W_dec.device.type == "cpu"
    assert not config_from_args(build_parser().parse_args([])).keep_fp8


def test_unknown_feature_word_is_a_clear_error(tmp_path: Path) -> None:
    """A label search with no hit says so (before any generation)."""
    from r1_plugin.demo.run import load_sae, resolve_feature

    cfg = DemoConfig(feature="nonexistentfeatureword", out=tmp_path)
    sae = load_sae(cfg)
    with pytest.raises(DemoError, match="nonexistentfeatureword"):
        resolve_feature(cfg, sae)


def test_demo_feature_map_is_titled_by_the_sae(demo: tuple) -> None:
    """The map of the embedded SAE names it (its release is None: it has no hub id) in the PNG's and page's title."""
    _, out, _ = demo
    page = (out / "feature_map.html").read_text(encoding="utf-8")
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert "tiny-r1-sae/layer_2" in title and "None" not in title, title
