"""Sinks on the R1 architecture and R1's chat format: DeepSeek-V3 (MLA), the prefix-end check, outputs, W&B, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sinks import QWEN, brute_force_alpha, forced_sink_model, qwen_distill  # noqa: F401
from transformer_lens import HookedTransformer

from r1_plugin.chat import format_r1_prompt
from r1_plugin.response_prefix import response_prefix_end
from r1_plugin.sinks import (
    SinkDetectionError,
    SinkMonitor,
    SinkThresholds,
    check_response_prefix_sink,
    find_attention_sinks,
    log_sinks,
    scan_sinks,
)

R1_NAME = "deepseek-ai/DeepSeek-R1-Zero"
RESPONSE = "Okay, so the user said hi. Let me answer politely and briefly."


@pytest.fixture(scope="module")
def deepseek(hf_cache: object) -> HookedTransformer:
    """A tiny random DeepSeek-V3 (MLA attention, MoE, latent KV cache) loaded through r1_plugin's patches."""
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    write_tiny_checkpoint(R1_NAME, tiny_config(), seed=11)
    return HookedTransformer.from_pretrained_no_processing(R1_NAME, device="cpu")


def r1_ids(model: HookedTransformer, text: str) -> torch.Tensor:
    """Token ids of R1 chat text (it carries its own BOS)."""
    return model.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


# --- the DeepSeek-V3 architecture -------------------------------------------------------------------------------
def test_deepseek_alpha_equals_brute_force_and_chunks(deepseek: HookedTransformer) -> None:
    ids = r1_ids(deepseek, format_r1_prompt(deepseek, "What is 2+2?") + RESPONSE)
    report = find_attention_sinks(deepseek, ids)
    assert report.alpha.shape == (deepseek.cfg.n_layers, deepseek.cfg.n_heads, ids.shape[1])
    torch.testing.assert_close(report.alpha, brute_force_alpha(deepseek, ids)[0], rtol=0, atol=1e-12)
    # Chunks run through the latent (compressed) KV cache and give the same numbers.
    chunked = scan_sinks(deepseek, ids, thresholds=SinkThresholds(chunk_size=16))
    assert chunked.sinks is not None and chunked.max_pattern_numel <= deepseek.cfg.n_heads * 16 * ids.shape[1]
    torch.testing.assert_close(chunked.sinks.alpha, report.alpha, rtol=0, atol=1e-5)


def test_deepseek_generation_tracker_equals_one_shot(deepseek: HookedTransformer) -> None:
    ids = r1_ids(deepseek, format_r1_prompt(deepseek, "Hi"))
    tracker = SinkMonitor(deepseek)
    out = tracker.generate(ids, max_new_tokens=12, do_sample=False, stop_at_eos=False)
    assert tracker.n_positions == out.shape[1] - 1
    one_shot = scan_sinks(deepseek, out[:, :-1])
    assert one_shot.sinks is not None and one_shot.massive is not None
    torch.testing.assert_close(tracker.report().alpha, one_shot.sinks.alpha, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        tracker.massive_activations().residual_norms, one_shot.massive.residual_norms, rtol=1e-5, atol=1e-5
    )


# --- the R1 prefix-end check ------------------------------------------------------------------------------------
def sink_model_for(tokenizer_model: HookedTransformer, position: int) -> HookedTransformer:
    """The forced-sink model (sink at `position`) with the distill's tokenizer, so R1 chat text can be given."""
    model = forced_sink_model(position, d_vocab=len(tokenizer_model.tokenizer), n_ctx=96)
    model.set_tokenizer(tokenizer_model.tokenizer)
    return model


def test_prefix_end_sink_is_reported(qwen_distill: HookedTransformer) -> None:  # noqa: F811
    text = format_r1_prompt(qwen_distill, "Hi") + RESPONSE
    str_tokens = qwen_distill.to_str_tokens(r1_ids(qwen_distill, text)[0])
    end = response_prefix_end(qwen_distill, r1_ids(qwen_distill, text)[0])  # the steering gate's definition
    assert end is not None and str_tokens[end].rstrip().endswith(".") and len(str_tokens) - end >= 8
    check = check_response_prefix_sink(sink_model_for(qwen_distill, end), text)
    assert check.n_generated == 0  # the text already holds the prefix and enough tokens after it
    assert check.prefix_end == end and check.is_sink and check.prefix_end_token == str_tokens[end]
    assert check.bos_position == 0 and check.sink_rate_at(end) == 1.0 and check.sink_rate_at(0) < 0.1
    assert check.other_sinks == [] and check.rank_of_prefix_end() == 1
    assert "YES" in check.summary()
    df = check.to_dataframe()
    assert df.loc[df.role == "prefix_end", "position"].tolist() == [end]
    assert df.loc[df.role == "bos", "position"].tolist() == [0]

    # A sink at BOS only: the prefix end is not a sink, BOS is.
    bos_only = check_response_prefix_sink(sink_model_for(qwen_distill, 0), text)
    assert bos_only.prefix_end == end and not bos_only.is_sink
    assert bos_only.sink_rate_at(0) == 1.0 and bos_only.report.sink_positions == [0]


def test_prefix_check_generates_with_tracker(qwen_distill: HookedTransformer) -> None:  # noqa: F811
    text = format_r1_prompt(qwen_distill, "What is 2+2?")
    check = check_response_prefix_sink(qwen_distill, text, max_new_tokens=30)
    assert check.n_generated > 0
    # The tracked statistics are the detector's on the sequence the model ran.
    direct = find_attention_sinks(qwen_distill, check.tokens)
    torch.testing.assert_close(check.report.alpha, direct.alpha, rtol=0, atol=1e-5)
    if check.prefix_end is None:
        assert not check.is_sink and "no response-prefix end" in check.reason
    # Without generation and without a prefix, the check says so instead of guessing.
    none = check_response_prefix_sink(qwen_distill, text, max_new_tokens=0)
    assert none.prefix_end is None and not none.is_sink and "max_new_tokens=0" in none.reason
    with pytest.raises(SinkDetectionError, match="<think>"):
        check_response_prefix_sink(qwen_distill, "no chat format here")
    # The thresholds as one SinkThresholds; the old keywords still work for one release, with a warning.
    th = SinkThresholds(epsilon=0.2, min_queries=3)
    new = check_response_prefix_sink(qwen_distill, text, max_new_tokens=12, thresholds=th)
    with pytest.warns(DeprecationWarning, match="check_response_prefix_sink"):
        old = check_response_prefix_sink(qwen_distill, text, max_new_tokens=12, epsilon=0.2, min_queries=3)
    assert new.report.epsilon == old.report.epsilon == 0.2 and new.report.min_queries == 3
    torch.testing.assert_close(new.report.sink_rate, old.report.sink_rate, rtol=0, atol=0)
    assert (new.prefix_end, new.is_sink, new.reason) == (old.prefix_end, old.is_sink, old.reason)


# --- outputs: DataFrame, PNG, HTML, W&B, CLI --------------------------------------------------------------------
def test_heatmap_png_html_and_wandb(qwen_distill: HookedTransformer, tmp_path: Path) -> None:  # noqa: F811
    from r1_plugin.tracking import read_offline_run, start_run

    text = format_r1_prompt(qwen_distill, "Hi") + RESPONSE
    model = sink_model_for(qwen_distill, 12)
    check = check_response_prefix_sink(model, text)
    png = check.save_heatmap(tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = check.report.save_heatmap(tmp_path / "h.html").read_text(encoding="utf-8")
    assert "&lt;think&gt;" in html or "<think>" not in html  # token strings are escaped
    assert "pos 12 " in html and html.count("<tr>") == model.cfg.n_layers + 1
    with pytest.raises(ValueError, match=".png"):
        check.report.save_heatmap(tmp_path / "h.jpg")

    with start_run("sinks", {"model": "forced"}, mode="offline", dir=tmp_path) as tracker:
        log_sinks(tracker, check.report, check.massive, check)
        run_dir = tracker.run_dir
    run = read_offline_run(run_dir)
    table = run.table("sinks/positions")
    assert "role" in table["columns"] and len(table["data"]) == check.report.seq_len
    assert run.summary["sinks/prefix_end"] == check.prefix_end
    assert run.summary["sinks/n_sinks"] == len(check.report.sink_positions)


def test_cli_sinks(qwen_distill: HookedTransformer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from r1_plugin.cli import main

    out = tmp_path / "out"
    code = main(["sinks", "--model", QWEN, "--prompt", "Hi", "--max-new-tokens", "10", "--out", str(out),
                 "--no-wandb", "--device", "cpu"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"positions.csv", "massive.csv", "heatmap.png", "heatmap.html"}
    assert "response-prefix end sink" in capsys.readouterr().out
    assert main(["sinks", "--model", QWEN, "--prompt", "plain text", "--raw", "--no-wandb", "--device", "cpu"]) == 0
    assert "sink position(s)" in capsys.readouterr().out
