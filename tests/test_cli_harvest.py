"""`r1-plugin features harvest`: the shared model flags, an SAE in another dtype, and the same shard as Python's
`harvest(...)`; bad prompts files and SAE sources are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from sae_lens import SAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer

from r1_plugin.cli import main
from r1_plugin.cli._harvest import read_prompts
from r1_plugin.features import FeatureDB, harvest
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
HOOK = "blocks.1.hook_resid_post"
PROMPTS: list[Any] = ["Okay, so the user asked about 12 and 30.", "Wait, let me check again.", [5, 17, 42, 99],
                      "So the answer is 5.", "Hmm."]


@pytest.fixture(scope="module")
def sae_dir(hf_cache: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random float32 SAE on HOOK saved by SAELens (features fire often)."""
    write_tiny_distill(QWEN, seed=0)
    d_model = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu").cfg.d_model
    sae = SAE.from_dict(StandardSAEConfig(d_in=d_model, d_sae=24, metadata=SAEMetadata(hook_name=HOOK)).to_dict())
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.3)
        sae.b_enc.fill_(0.1)
    path = tmp_path_factory.mktemp("sae") / "sae"
    sae.save_model(path)
    return path


def test_cli_harvest_equals_the_python_call(sae_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bfloat16 model with a float32 SAE, through --dtype/--sae-dtype/--device/--first-n-layers."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(p if not isinstance(p, str) or i % 2 else {"text": p})
                                 for i, p in enumerate(PROMPTS)) + "\n")
    assert read_prompts(prompts) == PROMPTS
    out = tmp_path / "cli"
    code = main(["features", "harvest", "--model", QWEN, "--sae-path", str(sae_dir), "--prompts", str(prompts),
                 "--out", str(out), "--dtype", "bfloat16", "--sae-dtype", "float32", "--device", "cpu",
                 "--first-n-layers", "2", "--top-k", "5", "--batch-size", "2", "--no-progress", "--no-wandb"])
    assert code == 0, capsys.readouterr().err
    assert "5 prompts" in capsys.readouterr().out
    everything = tmp_path / "cli-special"
    assert main(["features", "harvest", "--model", QWEN, "--sae-path", str(sae_dir), "--prompts", str(prompts),
                 "--out", str(everything), "--dtype", "bfloat16", "--sae-dtype", "float32", "--device", "cpu",
                 "--top-k", "5", "--batch-size", "2", "--no-progress", "--no-wandb", "--keep-special"]) == 0

    model = HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu", dtype="bfloat16", first_n_layers=2)
    sae = SAE.load_from_disk(sae_dir, device="cpu", dtype="float32")
    ref = harvest(model, sae, PROMPTS, tmp_path / "py", top_k=5, batch_size=2, progress=False)
    ref_all = harvest(model, sae, PROMPTS, tmp_path / "py-special", top_k=5, batch_size=2, progress=False,
                      exclude_special=False)
    for cli_dir, py in ((out, ref), (everything, ref_all)):
        got, want = (pd.read_parquet(d / "activations.parquet") for d in (next(cli_dir.glob("shard-*")),
                                                                          py.shard_dir))
        pd.testing.assert_frame_equal(got, want)
        assert len(got) > 0
    got = pd.read_parquet(next(out.glob("shard-*")) / "activations.parquet")
    assert not got.equals(pd.read_parquet(next(everything.glob("shard-*")) / "activations.parquet"))  # BOS counts

    assert main(["features", "merge", str(out), "-o", str(tmp_path / "h.ddb")]) == 0
    with FeatureDB(activations=tmp_path / "h.ddb") as db:
        best = db.top_examples(int(got["feature_id"].iloc[0]), k=1)
    assert best and best[0].strength == pytest.approx(float(got.groupby("feature_id")["strength"].max().iloc[0]))


def test_cli_harvest_bad_input(sae_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"text": 3}\n')
    (tmp_path / "broken.jsonl").write_text('"ok"\n{nope\n')
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    base = ["features", "harvest", "--model", QWEN, "--out", str(tmp_path / "o"), "--no-wandb"]
    cases = [
        (["--sae-path", str(sae_dir), "--prompts", str(tmp_path / "missing.txt")], "missing.txt does not exist"),
        (["--sae-path", str(sae_dir), "--prompts", str(tmp_path / "bad.jsonl")], "bad.jsonl:2"),
        (["--sae-path", str(sae_dir), "--prompts", str(tmp_path / "broken.jsonl")], "is not JSON"),
        (["--sae-path", str(sae_dir), "--prompts", str(tmp_path / "empty.txt")], "holds no prompts"),
        (["--sae-path", str(tmp_path), "--prompts", str(tmp_path / "p.txt")], "holds no SAE"),
        (["--sae-path", str(sae_dir), "--sae-release", "r", "--prompts", str(tmp_path / "p.txt")], "exactly one"),
        (["--sae-release", "r", "--prompts", str(tmp_path / "p.txt")], "go together"),
        (["--sae-path", str(sae_dir), "--prompts", str(tmp_path / "p.txt"), "--shard-index", "2", "--num-shards",
          "2"], "shard_index must be in [0, 2)"),
    ]
    for argv, words in cases:
        assert main([*base, *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


def test_a_locked_database_is_not_called_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """A DuckDB file another process holds: one line, exit 2, saying so (not "is the file damaged? fetch it
    again"). An unwritable output: tests/test_harvest_faults.py."""
    import subprocess
    import sys

    from r1_plugin.testing.feature_db import write_activations

    db = write_activations(tmp_path / "a.ddb", [(0, 0, 1, "a")], [(0, 0, 0, 1.0)])
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb,sys,time; c=duckdb.connect({str(db)!r}); print('held', flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["features", "show", "0", "--activations", str(db)]) == 2
    finally:
        holder.communicate("", timeout=60)
    err = capsys.readouterr().err
    assert "another process has the database open" in err and "damaged" not in err and "Traceback" not in err
