"""SAE training on r1_plugin models with SAELens's own runner; its W&B metrics are read from the offline run.

SAELens logs straight through `wandb.log` (not r1_plugin's Tracker), so the run is read with the test-only
decoder of W&B's binary run file (tests/wandb_oracle.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from wandb_oracle import read_wandb_run, wait_for_run_file

from r1_plugin.training import (
    SAETrainingError,
    hook_layer,
    layers_needed,
    sae_runner_config,
    tokenized_dataset,
    train_sae,
)

DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
CONTEXT = 16
BATCH_TOKENS = 32
STEPS = 6

TEXTS = [
    "Okay, so I need to figure out why the sky is blue. Let me think about Rayleigh scattering first.",
    "Wait, maybe I should check the units again. The answer is 42, but let me verify the arithmetic.",
    "Alternatively, the integral can be split into two parts, each of which is easy to evaluate.",
    "Hmm, that doesn't seem right. Let me reconsider the problem from the beginning, step by step.",
] * 8


@pytest.fixture
def tiny_distill(hf_cache: Path) -> str:
    """A tiny random R1-Distill-Qwen (2 layers, d_model 64) in the offline HF cache under its real id.

    Written per test: other test modules write their own tiny checkpoints under the same id.
    """
    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    write_tiny_distill(DISTILL)
    return DISTILL


def _tiny_cfg(model: str, hook: str, tmp_path: Path, **kwargs: object):
    """A few-step training config: context 16, 32-token batches, every step logged, evals every 3 steps."""
    return sae_runner_config(
        model,
        hook,
        d_sae=96,
        context_size=CONTEXT,
        training_tokens=BATCH_TOKENS * STEPS,
        train_batch_size_tokens=BATCH_TOKENS,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        n_eval_batches=1,
        eval_batch_size_prompts=2,
        wandb_log_frequency=1,
        eval_every_n_wandb_logs=3,
        output_path=str(tmp_path / "sae"),
        verbose=False,
        **kwargs,
    )


def _check_logged_training(run_dir: Path, cfg, first_n_layers: int) -> None:
    """SAELens's own W&B logging: its config, per-step losses/metrics and eval metrics are in the offline run."""
    run = read_wandb_run(run_dir)
    assert run.exit_code == 0
    assert run.project == cfg.logger.wandb_project
    assert run.config["hook_name"] == cfg.hook_name and run.config["model_name"] == cfg.model_name
    assert run.config["model_from_pretrained_kwargs"]["first_n_layers"] == first_n_layers
    mse = run.metric("losses/mse_loss")
    assert len(mse) == STEPS and all(v >= 0 for v in mse)
    assert len(run.metric("losses/overall_loss")) == STEPS
    assert len(run.metric("metrics/explained_variance")) == STEPS
    assert len(run.metric("metrics/l0")) == STEPS
    assert run.metric("details/n_training_samples")[-1] == BATCH_TOKENS * STEPS
    # SAELens's evals ran at steps 2 and 5 (every 3 steps); W&B merges them into those steps' rows.
    assert len(run.metric("reconstruction_quality/cossim")) == 2
    assert len(run.metric("model_performance_preservation/ce_loss_score")) == 2
    assert len(run.history) == STEPS
    assert run.summary["losses/mse_loss"] == mse[-1]


def test_hook_layer_helpers() -> None:
    """Which layer a hook is in, and how many layers a truncated model must keep for it."""
    assert hook_layer("blocks.37.hook_resid_post") == 37
    assert layers_needed("blocks.37.hook_resid_post") == 38  # truncated R1 for layer 37
    assert layers_needed("blocks.0.mlp.hook_post") == 1
    assert layers_needed("hook_embed") is None


def test_tokenized_dataset_rows(tiny_distill: str) -> None:
    """Local pre-tokenised rows: fixed length, BOS first, texts joined by BOS, SAELens's 'input_ids' column."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_distill)
    ds = tokenized_dataset(tok, TEXTS[:4], CONTEXT)
    assert ds.column_names == ["input_ids"] and len(ds) >= 2
    assert all(len(r) == CONTEXT and r[0] == tok.bos_token_id for r in ds["input_ids"])
    first = tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert ds["input_ids"][0][1:] == first[: CONTEXT - 1]
    with pytest.raises(SAETrainingError, match="fewer than one row"):
        tokenized_dataset(tok, ["hi"], 64)


def test_config_recipe_errors(tiny_distill: str) -> None:
    """Clear errors for a truncation that drops the hook's layer, unknown architectures, bad sizes, odd hooks."""
    with pytest.raises(SAETrainingError, match="drops the layer"):
        sae_runner_config(tiny_distill, "blocks.1.hook_resid_post", d_sae=8, first_n_layers=1)
    with pytest.raises(SAETrainingError, match="unknown SAE architecture"):
        sae_runner_config(tiny_distill, "blocks.0.hook_resid_post", d_sae=8, architecture="nope")
    with pytest.raises(SAETrainingError, match="less than one batch"):
        sae_runner_config(tiny_distill, "blocks.0.hook_resid_post", d_sae=8, training_tokens=10)
    with pytest.raises(SAETrainingError, match="pass d_in explicitly"):
        sae_runner_config(tiny_distill, "blocks.0.attn.hook_z", d_sae=8)
    cfg = sae_runner_config(
        tiny_distill, "blocks.0.hook_resid_post", d_sae=8, first_n_layers=None, verbose=False
    )
    assert "first_n_layers" not in cfg.model_from_pretrained_kwargs
    assert cfg.sae.d_in == 64 and cfg.dataset_path == ""


def test_train_sae_on_truncated_distill_logs_offline(tiny_distill: str, tmp_path: Path) -> None:
    """SAELens's runner trains a TopK SAE a few steps on a 1-layer truncation; the offline run holds its metrics."""
    from transformers import AutoTokenizer

    cfg = _tiny_cfg(
        tiny_distill, "blocks.0.hook_resid_post", tmp_path, architecture="topk", sae_kwargs={"k": 8}
    )
    assert cfg.model_from_pretrained_kwargs == {"center_writing_weights": False, "first_n_layers": 1}
    dataset = tokenized_dataset(AutoTokenizer.from_pretrained(tiny_distill), TEXTS, CONTEXT)
    import wandb
    from sae_lens import llm_sae_training_runner

    sigint_before = signal.getsignal(signal.SIGINT)
    mode_before = os.environ.get("WANDB_MODE")
    init_before = wandb.init
    seen_by_sae_lens: list[object] = []
    real_run = llm_sae_training_runner.LanguageModelSAETrainingRunner.run

    def run_and_look(self: object) -> object:  # what `wandb.init` is while SAELens trains (test-local spy)
        seen_by_sae_lens.append(wandb.init)
        return real_run(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llm_sae_training_runner.LanguageModelSAETrainingRunner, "run", run_and_look)
        result = train_sae(cfg, dataset, wandb_dir=tmp_path)
    assert signal.getsignal(signal.SIGINT) is sigint_before  # SAELens's handler removed again
    assert os.environ.get("WANDB_MODE") == mode_before
    assert wandb.init is init_before and seen_by_sae_lens == [init_before]  # never replaced, not even during

    assert result.sae.cfg.d_in == 64 and result.sae.cfg.d_sae == 96
    assert len(result.runner.model.blocks) == 1  # first_n_layers=1 of the 2-layer distill
    assert result.sae.cfg.metadata.model_from_pretrained_kwargs["first_n_layers"] == 1
    assert (tmp_path / "sae" / "cfg.json").is_file()
    assert result.run_dir is not None and result.run_dir.parent == (tmp_path / "wandb").resolve()
    assert result.run_dir.name.startswith("offline-run-") and result.run_dir.name.endswith(result.wandb_id)
    assert (result.run_dir / f"run-{result.wandb_id}.wandb").is_file()  # what `wandb sync` uploads
    _check_logged_training(result.run_dir, cfg, first_n_layers=1)


def test_failed_training_still_finishes_its_run(tiny_distill: str, tmp_path: Path) -> None:
    """A crash inside SAELens's training leaves its W&B run finished as failed, with the error recorded."""
    from sae_lens.training.sae_trainer import SAETrainer
    from transformers import AutoTokenizer

    cfg = _tiny_cfg(tiny_distill, "blocks.0.hook_resid_post", tmp_path)
    dataset = tokenized_dataset(AutoTokenizer.from_pretrained(tiny_distill), TEXTS, CONTEXT)
    original = SAETrainer._run_and_log_evals

    def failing_evals(self: SAETrainer) -> None:
        if self.n_training_steps == 2:
            raise RuntimeError("eval exploded")
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SAETrainer, "_run_and_log_evals", failing_evals)
        with pytest.raises(RuntimeError, match="eval exploded"):
            train_sae(cfg, dataset, wandb_dir=tmp_path)
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{cfg.logger.wandb_id}")
    assert wait_for_run_file(run_dir)
    run = read_wandb_run(run_dir)
    assert run.exit_code == 1
    assert run.summary["error"] == "RuntimeError: eval exploded"
    assert len(run.metric("losses/mse_loss")) == 3  # steps 0-2 were logged before the crash
    torch.manual_seed(0)
