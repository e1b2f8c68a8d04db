"""Over-steering sweeps: reversion flagging, the table, the plot, W&B logging; and the `r1-plugin steer` CLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from r1_plugin.steering import AfterResponsePrefix
from r1_plugin.steering.sweep import find_reversions, sweep_strengths
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
HOOK = "blocks.0.hook_resid_post"


def test_find_reversions() -> None:
    strengths = [1, 2, 4, 8, 16, -2, -8]
    # Rises to a peak at 4, falls back toward the baseline (0) at 8 and 16; negative side is monotonic.
    values = [1.0, 3.0, 6.0, 2.0, 0.5, -1.0, -4.0]
    flags, peak = find_reversions(strengths, values, baseline=0.0, drop=0.5)
    assert flags == [False, False, False, True, True, False, False]
    assert peak == 4
    monotonic, peak = find_reversions([1, 2, 3], [1.0, 2.0, 3.0], baseline=0.0)
    assert monotonic == [False, False, False] and peak == 3
    assert find_reversions([1, 2], [0.0, 0.0], baseline=0.0) == ([False, False], None)
    assert find_reversions([1, 2, 3], [2.0, math.nan, 0.1], baseline=0.0)[0] == [False, False, True]


@pytest.fixture(scope="module")
def qwen(hf_cache: Any) -> HookedTransformer:
    write_tiny_distill(QWEN, seed=0)
    return HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", dtype=torch.float32)


def test_sweep_table_plot_and_wandb(qwen: HookedTransformer, tmp_path: Path) -> None:
    from r1_plugin.tracking import read_offline_run, start_run

    cfg = StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=HOOK))
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        sae.b_enc.fill_(0.3)
    strengths = [0.0, 2.0, 8.0, 32.0]
    with start_run("sweep", {"test": True}, mode="offline", dir=tmp_path) as tracker:
        result = sweep_strengths(
            qwen, ["What is two plus two?", "Name a colour."], strengths, sae=sae, feature=5,
            gate=AfterResponsePrefix(max_tokens=2), max_new_tokens=8, batch_size=3,
            behaviour=lambda text: float(text.count("e")), tracker=tracker,
        )
        run_dir = tracker.run_dir
    table = result.table
    assert len(table) == 2 * (len(strengths) + 1)
    for col in ("prompt", "strength", "text", "gate_open_at", "feature_act", "kl", "behaviour", "reverted",
                "reverted_feature_act", "peak_strength"):
        assert col in table
    steered = table[~table["baseline"]]
    base = table[table["baseline"]]
    # Strength 0 is the unsteered model: same text, zero KL, baseline feature activation.
    zero = steered[steered["strength"] == 0.0]
    assert list(zero["text"]) == list(base["text"])
    assert (zero["kl"].abs() < 1e-6).all()
    assert list(zero["feature_act"].round(5)) == list(base["feature_act"].round(5))
    # Stronger pushes move the steered feature and the distribution more.
    for _, frame in steered.groupby("prompt_index"):
        frame = frame.sort_values("strength")
        assert frame["gate_open_at"].notna().all() and frame["gate_open_at"].nunique() == 1
        assert frame["feature_act"].is_monotonic_increasing
        assert frame["kl"].iloc[-1] > frame["kl"].iloc[1] > 0
    assert result.primary_metric == "behaviour"
    fig = result.plot()
    assert len(fig.axes) == 3
    offline = read_offline_run(run_dir)
    assert offline.table("steering_sweep")["columns"][:3] == ["prompt_index", "prompt", "strength"]
    assert len(offline.table("steering_sweep_generations")["data"]) == len(table)


def test_cli_direction_file_side_by_side(qwen: HookedTransformer, tmp_path: Path, capsys: Any) -> None:
    from r1_plugin.cli import main

    path = tmp_path / "vec.pt"
    torch.save({"direction": torch.randn(64, generator=torch.Generator().manual_seed(0)), "hook_name": HOOK}, path)
    code = main(["steer", "--model", QWEN, "--prompt", "What is two plus two?", "--direction", str(path),
                 "--strength", "6", "--gate", "prefix:sentence:2", "--max-new-tokens", "6", "--no-wandb",
                 "--width", "100"])
    out = capsys.readouterr().out
    assert code == 0
    assert "unsteered" in out and "| steered" in out
    assert "gate AfterResponsePrefix(end='sentence', max_tokens=2) opened at position" in out
    # A gate that cannot open says so.
    main(["steer", "--model", QWEN, "--prompt", "Hi", "--direction", str(path), "--gate", "text:zzzz-none",
          "--max-new-tokens", "3", "--no-wandb"])
    assert "never opened" in capsys.readouterr().out


def test_cli_sae_feature_sweep_and_errors(qwen: HookedTransformer, monkeypatch: Any, capsys: Any) -> None:
    from r1_plugin.cli import main

    sae = SAE.from_dict(StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=HOOK)).to_dict())
    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, release, sae_id, **kw: sae))
    code = main(["steer", "--model", QWEN, "--prompt", "Hi", "--sae-release", "r", "--sae-id", "i", "--feature", "3",
                 "--sweep", "0,4,16", "--gate", "generated", "--max-new-tokens", "4", "--no-wandb"])
    out = capsys.readouterr().out
    assert code == 0 and "reverted" in out and "feature_act" in out
    assert main(["steer", "--model", QWEN, "--prompt", "Hi", "--no-wandb"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert main(["steer", "--model", QWEN, "--prompt", "Hi", "--direction", "nope.pt", "--mode", "clamp",
                 "--no-wandb"]) == 2


def test_sweep_over_several_features_reads_their_summed_activation(qwen: HookedTransformer, capsys: Any,
                                                                   monkeypatch: Any) -> None:
    """`steer` and the CLI take several SAE features; a sweep over them reads the sum of their activations
    (it used to raise 'readout_sae needs readout_feature', a traceback from `r1-plugin steer --feature 3 5
    --sweep ...`)."""
    from r1_plugin.cli import main
    from r1_plugin.steering.sae_directions import encode_features

    cfg = StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=HOOK))
    sae = SAE.from_dict(cfg.to_dict())
    with torch.no_grad():
        sae.b_enc.fill_(0.3)
    result = sweep_strengths(qwen, "What is two plus two?", [0.0, 4.0], sae=sae, feature=[3, 5],
                             gate=AfterResponsePrefix(max_tokens=2), max_new_tokens=6)
    table = result.table
    base = table[table["baseline"]].iloc[0]
    from r1_plugin.chat import r1_chat_tokens

    tokens = r1_chat_tokens(qwen, "What is two plus two?")
    with torch.no_grad():
        full = qwen.generate(tokens, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=True)
        _, cache = qwen.run_with_cache(full, names_filter=[HOOK])
        acts = encode_features(sae, cache[HOOK], [3, 5]).sum(-1)[0]
    expected = float(acts[int(base["gate_open_at"]):].mean())
    assert base["feature_act"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    steered = table[~table["baseline"]].sort_values("strength")
    assert steered["feature_act"].iloc[1] > steered["feature_act"].iloc[0]

    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, release, sae_id, **kw: sae))
    code = main(["steer", "--model", QWEN, "--prompt", "Hi", "--sae-release", "r", "--sae-id", "i", "--feature", "3",
                 "5", "--sweep", "0,4", "--gate", "generated", "--max-new-tokens", "3", "--no-wandb"])
    assert code == 0 and "feature_act" in capsys.readouterr().out


def test_cli_bad_feature_hook_or_direction_shape_is_a_clean_error(qwen: HookedTransformer, monkeypatch: Any,
                                                                 capsys: Any, tmp_path: Path) -> None:
    """A feature id out of range, a hook the model lacks or a direction of the wrong shape for the hook is a
    user error: exit code 2 and one line on stderr, not a traceback."""
    from r1_plugin.cli import main

    sae = SAE.from_dict(StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=HOOK)).to_dict())
    monkeypatch.setattr(SAE, "from_pretrained", classmethod(lambda cls, release, sae_id, **kw: sae))
    common = ["steer", "--model", QWEN, "--prompt", "Hi", "--max-new-tokens", "2", "--gate", "always", "--no-wandb"]
    assert main([*common, "--sae-release", "r", "--sae-id", "i", "--feature", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([*common, "--sae-release", "r", "--sae-id", "i", "--feature", "99", "--sweep", "0,1"]) == 2
    assert "out of range" in capsys.readouterr().err
    path = tmp_path / "vec.pt"
    torch.save(torch.randn(64), path)
    assert main([*common, "--direction", str(path), "--hook", "blocks.9.hook_resid_post"]) == 2
    assert "not a hook of this model" in capsys.readouterr().err
    assert main([*common, "--direction", str(path), "--hook", "blocks.0.attn.hook_z"]) == 2
    assert "direction has shape" in capsys.readouterr().err


def test_sweep_with_a_closing_gate_reads_out_only_where_it_steered(qwen: HookedTransformer) -> None:
    """A closing gate (Window) steers positions [open, close): the sweep's n_steered, KL and feature read-out
    cover exactly those (before, the read-out replayed the open position only and ran on to the end)."""
    from r1_plugin.steering import FromPosition, Window

    cfg = StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=HOOK))
    sae = SAE.from_dict(cfg.to_dict())
    n_prompt = qwen.to_tokens("What is two plus two?").shape[1]
    start, stop = n_prompt + 1, n_prompt + 4
    result = sweep_strengths(qwen, ["What is two plus two?"], [4.0, 16.0], sae=sae, feature=5,
                             gate=Window(FromPosition(start), FromPosition(stop)), max_new_tokens=8, batch_size=2)
    steered = result.table[~result.table["baseline"]]
    assert list(steered["gate_open_at"]) == [start, start]
    assert list(steered["gate_close_at"]) == [stop, stop]
    assert list(steered["n_steered"]) == [stop - start] * 2  # not every position from `start` to the end
    base = result.table[result.table["baseline"]].iloc[0]
    assert (base["gate_open_at"], base["gate_close_at"]) == (start, stop)
