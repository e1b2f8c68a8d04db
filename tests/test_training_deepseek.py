"""SAE training on a tiny DeepSeek-V3 (R1's architecture: MLA, MoE) truncated with first_n_layers, logged offline."""

from __future__ import annotations

from pathlib import Path

from test_training import BATCH_TOKENS, CONTEXT, STEPS, TEXTS, _check_logged_training, _tiny_cfg

from r1_plugin.training import tokenized_dataset, train_sae

R1 = "deepseek-ai/DeepSeek-R1"


def test_train_sae_on_truncated_tiny_r1(hf_cache: Path, tmp_path: Path) -> None:
    """Layer 1 of a 3-layer R1 (dense layer 0, MoE layer 1): only 2 layers are loaded; SAELens's metrics are logged."""
    from transformers import AutoTokenizer

    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    config = tiny_config()
    assert config["num_hidden_layers"] == 3 and config["first_k_dense_replace"] == 1
    write_tiny_checkpoint(R1, config, seed=3)
    cfg = _tiny_cfg(R1, "blocks.1.hook_resid_post", tmp_path, architecture="batchtopk", sae_kwargs={"k": 6})
    assert cfg.model_from_pretrained_kwargs["first_n_layers"] == 2
    assert cfg.sae.d_in == config["hidden_size"]
    dataset = tokenized_dataset(AutoTokenizer.from_pretrained(R1), TEXTS, CONTEXT)

    result = train_sae(cfg, dataset, wandb_dir=tmp_path)

    assert result.sae.cfg.d_in == config["hidden_size"]
    assert result.runner.model.cfg.n_layers == 2 and len(result.runner.model.blocks) == 2  # truncated R1
    assert result.run_dir is not None and (result.run_dir / f"run-{result.wandb_id}.wandb").is_file()
    _check_logged_training(result.run_dir, cfg, first_n_layers=2)
    assert BATCH_TOKENS * STEPS == cfg.training_tokens
