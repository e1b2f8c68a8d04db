"""The committed tiny R1 assets have exactly the structure `scripts/make_tiny_r1.py` writes (no retraining here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from r1_plugin.demo import assets
from r1_plugin.demo.build import (
    MODEL_DATA_SEED,
    ModelTrainingConfig,
    build_tokenizer_for,
    sae_entry_yaml,
)
from r1_plugin.demo.synthetic import (
    PUBLISHED_EXTRA_CONFIG,
    TINY_R1_ARCH,
    TraceConfig,
    expected_checkpoint_keys,
    generate_traces,
    published_expert_keys,
)

REPO = Path(__file__).resolve().parents[1]
MAX_ASSET_BYTES = 4 * 1024 * 1024  # ~3.4 MB today: bf16 model 1.6 MB, DuckDB file 1.3 MB (its block floor)


@pytest.fixture(scope="module")
def config() -> dict:
    """The committed config.json."""
    return json.loads((assets.MODEL_DIR / "config.json").read_text())


def test_every_asset_file_is_present_and_not_git_ignored() -> None:
    """The demo's files exist, are small, and no .gitignore rule keeps them out of a clone or the wheel."""
    files = [assets.MODEL_DIR / f for f in assets.MODEL_FILES]
    files += [assets.SAE_DIR / f for f in assets.SAE_FILES]
    files += [assets.SAE_ENTRY_FILE, assets.FEATURES_LABELS, assets.FEATURES_ACTIVATIONS]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, missing
    total = sum(f.stat().st_size for f in assets.ASSETS_DIR.rglob("*") if f.is_file())
    assert total < MAX_ASSET_BYTES, f"embedded assets are {total} bytes"
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *map(str, files)], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.strip() == "", f"git-ignored asset files: {ignored.stdout}"


def test_config_is_what_the_script_writes(config: dict) -> None:
    """config.json: HF's DeepseekV3 config of TINY_R1_ARCH plus R1's routing keys, vocab from the tokenizer."""
    assert config["architectures"] == ["DeepseekV3ForCausalLM"]
    assert config["model_type"] == "deepseek_v3"
    for key, value in {**TINY_R1_ARCH, **PUBLISHED_EXTRA_CONFIG}.items():
        assert config[key] == value, key
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["q_lora_rank"] and config["n_shared_experts"] == 1 and config["first_k_dense_replace"] == 1
    assert config["dtype"] == ModelTrainingConfig().dtype
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(assets.MODEL_DIR))
    assert config["vocab_size"] == len(tokenizer)
    assert config["bos_token_id"] == tokenizer.bos_token_id
    assert config["eos_token_id"] == tokenizer.eos_token_id


def test_checkpoint_is_in_r1s_published_per_expert_layout(config: dict) -> None:
    """model.safetensors holds exactly R1's tensor names (per-expert mlp.experts.{e}.*_proj.weight) in bf16."""
    from safetensors import safe_open
    from transformers import DeepseekV3Config

    hf = DeepseekV3Config(**{k: v for k, v in config.items() if k not in PUBLISHED_EXTRA_CONFIG})
    with safe_open(str(assets.MODEL_DIR / "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
        gate = f.get_tensor("model.layers.1.mlp.experts.0.gate_proj.weight")
    assert keys == expected_checkpoint_keys(hf)
    assert set(published_expert_keys(4, 1, 8)) <= set(keys)
    assert not [k for k in keys if k.endswith("gate_up_proj")]
    assert dtypes == {"BF16"}
    assert tuple(gate.shape) == (config["moe_intermediate_size"], config["hidden_size"])


def test_tokenizer_is_reproducible_from_the_synthetic_traces() -> None:
    """Rebuilding the tokenizer from the same seeded traces gives byte-identical tokenizer files."""
    traces = generate_traces(ModelTrainingConfig().n_traces, MODEL_DATA_SEED, TraceConfig())
    rebuilt = build_tokenizer_for(traces)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert rebuilt[name] == (assets.MODEL_DIR / name).read_bytes(), name
    template = json.loads(rebuilt["tokenizer_config.json"])["chat_template"]
    assert "<think>\\n" in template and "<｜Assistant｜>" in template


def test_sae_file_is_goodfire_format_and_matches_its_entry() -> None:
    """The .pt is a weights-only {W, b_enc, b_dec} dict whose shapes match sae.yaml (what the build writes)."""
    state = torch.load(assets.SAE_DIR / assets.SAE_FILE, map_location="cpu", weights_only=True)
    assert set(state) == {"W", "b_enc", "b_dec"}
    entry = assets.sae_entry()
    over = entry["config_overrides"]
    assert tuple(state["W"].shape) == (over["d_in"], over["d_sae"])
    assert tuple(state["b_enc"].shape) == (over["d_sae"],)
    assert tuple(state["b_dec"].shape) == (over["d_in"],)
    assert over["hook_name"] == assets.SAE_HOOK and over["architecture"] == "topk"
    assert "repo_id" not in entry, "the embedded SAE names no hub repo: it loads by path only"
    assert [s["path"] for s in entry["saes"]] == [assets.SAE_FILE]
    sae_cfg = json.loads((assets.SAE_DIR / assets.SAE_SUBDIR / "config.json").read_text())
    assert sae_cfg == {"d_in": over["d_in"], "expansion_factor": over["d_sae"] // over["d_in"], "k": over["k"]}
    info = json.loads((assets.SAE_DIR / assets.SAE_SUBDIR / "build_info.json").read_text())
    text = sae_entry_yaml(over["d_in"], over["d_sae"], over["k"], info["heldout"]["variance_explained"])
    assert assets.SAE_ENTRY_FILE.read_text() == text
    assert yaml.safe_load(text)[assets.SAE_NAME] == entry


def test_embedded_sae_loads_by_path_and_computes_goodfires_encode() -> None:
    """`assets.load_sae()` (SAE.load_from_disk with the Goodfire converter) encodes and decodes exactly as
    Goodfire's reference maths on the file's tensors; the embedded SAE is in no registry."""
    from r1_plugin.demo.build import goodfire_decode, goodfire_encode
    from r1_plugin.saes.releases import raw_releases

    state = torch.load(assets.SAE_DIR / assets.SAE_FILE, map_location="cpu", weights_only=True)
    sae = assets.load_sae()
    k = assets.sae_entry()["config_overrides"]["k"]
    x = torch.randn(5, state["W"].shape[0], generator=torch.Generator().manual_seed(0))
    f = goodfire_encode(state, x, k)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae.decode(f), goodfire_decode(state, f))
    assert sae.cfg.metadata.hook_name == assets.SAE_HOOK
    assert not any("tiny" in release for release in raw_releases())


def test_feature_database_has_goodfires_schema_and_heuristic_labels() -> None:
    """autointerp.db + the .ddb open with FeatureDB; one label per feature; 'backtracking' finds examples."""
    import sqlite3

    import duckdb

    from r1_plugin.features import ACTIVATIONS_SCHEMA, LABELS_SCHEMA, FeatureDB, detect_format

    con = duckdb.connect(str(assets.FEATURES_ACTIVATIONS), read_only=True)
    try:
        for table, columns in ACTIVATIONS_SCHEMA.items():
            got = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            assert got[: len(columns)] == list(columns), table
    finally:
        con.close()
    assert detect_format(assets.FEATURES_LABELS) == "sqlite"  # as Goodfire's autointerp.db
    con = sqlite3.connect(str(assets.FEATURES_LABELS))
    try:
        got = [r[1] for r in con.execute("PRAGMA table_info(autointerp)").fetchall()]
        assert got == list(LABELS_SCHEMA["autointerp"])
    finally:
        con.close()
    d_sae = assets.sae_entry()["config_overrides"]["d_sae"]
    with FeatureDB(labels=assets.FEATURES_LABELS, activations=assets.FEATURES_ACTIVATIONS) as db:
        assert db.n_labels == d_sae
        assert db.feature_ids() == list(range(d_sae))
        hits = db.search("backtracking")
        assert hits, "no backtracking feature in the embedded feature database"
        best = hits[0]
        assert best.model_name and best.model_name.startswith("heuristic")
        examples = db.top_examples(best.feature_id, k=5)
        assert examples and all(e.strength > 0 for e in examples)
        assert any("Wait" in e.text for e in examples)
