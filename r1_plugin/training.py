"""Train SAEs on r1_plugin's models with SAELens's own runner, offline-friendly, logging to W&B through SAELens.

Recipe (see docs/wandb.md):

    from r1_plugin.training import sae_runner_config, tokenized_dataset, train_sae

    cfg = sae_runner_config("deepseek-ai/DeepSeek-R1", "blocks.37.hook_resid_post",
                            d_sae=2**16, architecture="batchtopk", k=64,
                            training_tokens=200_000_000, context_size=1024, device="cuda")
    # first_n_layers="auto" truncates R1 to 38 layers: layers after the hook are never loaded or run.
    result = train_sae(cfg, dataset=tokenized_dataset(tokenizer, texts, cfg.context_size))
    result.sae, result.run_dir   # `wandb sync result.run_dir` uploads an offline run later

Everything else is stock SAELens: `LanguageModelSAETrainingRunner(cfg, override_dataset=...)`, its metrics
(`losses/mse_loss`, `metrics/explained_variance`, `metrics/l0`, ...), checkpoints and artifacts.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from r1_plugin.errors import R1PluginError
from r1_plugin.hook_names import hook_layer
from r1_plugin.tracking import resolve_mode

if TYPE_CHECKING:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.saes.sae import TrainingSAE


DEFAULT_SAE_PROJECT = "r1-plugin-sae"
# Hooks whose activations are d_model wide (for inferring the SAE's d_in).
_D_MODEL_HOOK = re.compile(
    r"^(hook_embed|blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_attn_out|hook_mlp_out|ln\d\.hook_normalized)"
    r"|ln_final\.hook_normalized)$"
)


class SAETrainingError(R1PluginError, ValueError):
    """A training recipe that cannot work as asked (unknown architecture, d_in not inferable, bad sizes)."""


def layers_needed(hook_name: str) -> int | None:
    """How many leading layers a model needs to compute `hook_name` (the `first_n_layers` to load), or None."""
    layer = hook_layer(hook_name)
    return None if layer is None else layer + 1


def infer_d_in(model_name: str, hook_name: str) -> int:
    """The SAE input width for a d_model-wide hook, read from the model's HF config (local cache, offline ok)."""
    if not _D_MODEL_HOOK.match(hook_name):
        raise SAETrainingError(
            f"cannot infer d_in for hook {hook_name!r} (only residual/attn_out/mlp_out/embed hooks are d_model "
            "wide): pass d_in explicitly"
        )
    from transformer_lens.loading_from_pretrained import get_official_model_name
    from transformers import AutoConfig

    official = get_official_model_name(model_name)
    from r1_plugin.errors import missing_from_cache

    with missing_from_cache(official, "config.json", detail=True):
        hf_config = AutoConfig.from_pretrained(official)
    return int(hf_config.hidden_size)


def tokenized_dataset(
    tokenizer: Any,
    texts: Iterable[str],
    context_size: int,
    *,
    prepend_bos: bool = True,
    column: str = "input_ids",
) -> Dataset:
    """A local, pre-tokenised `datasets.Dataset` of `context_size`-token rows for SAELens's `override_dataset`.

    Texts are tokenised without special tokens, joined with the BOS (or EOS) token as separator and cut into
    full rows, each starting with BOS when `prepend_bos` (what SAELens's own pretokeniser does). The
    remainder shorter than a row is dropped. `tokenizer` is an HF tokenizer or a model with `.tokenizer`.
    """
    from datasets import Dataset

    tok = getattr(tokenizer, "tokenizer", None) or tokenizer
    if context_size < 2:
        raise SAETrainingError(f"context_size must be at least 2, got {context_size}")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if prepend_bos and bos is None:
        raise SAETrainingError("prepend_bos=True but the tokenizer has neither a BOS nor an EOS token")
    body = context_size - 1 if prepend_bos else context_size
    stream: list[int] = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if stream and bos is not None:
            stream.append(bos)
        stream.extend(ids)
    rows = [stream[i : i + body] for i in range(0, len(stream) - body + 1, body)]
    if not rows:
        raise SAETrainingError(
            f"the texts give {len(stream)} tokens, fewer than one row of {context_size}: pass more text"
        )
    if prepend_bos:
        rows = [[bos, *row] for row in rows]
    return Dataset.from_dict({column: rows})


# Long: a flat recipe; its length is the 30 SAELens fields it takes and passes on one to one (checks are helpers).
def sae_runner_config(
    model_name: str,
    hook_name: str,
    *,
    d_sae: int,
    d_in: int | None = None,
    architecture: str = "standard",
    sae_kwargs: dict[str, Any] | None = None,
    first_n_layers: int | Literal["auto"] | None = "auto",
    model_from_pretrained_kwargs: dict[str, Any] | None = None,
    context_size: int = 1024,
    training_tokens: int = 100_000_000,
    train_batch_size_tokens: int = 4096,
    store_batch_size_prompts: int = 8,
    n_batches_in_buffer: int = 16,
    lr: float = 3e-4,
    device: str = "cpu",
    dtype: str = "float32",
    llm_device: str | None = None,
    seed: int = 42,
    log_to_wandb: bool = True,
    wandb_project: str = DEFAULT_SAE_PROJECT,
    run_name: str | None = None,
    wandb_log_frequency: int = 10,
    eval_every_n_wandb_logs: int = 100,
    n_eval_batches: int = 10,
    n_batches_for_norm_estimate: int = 100,
    output_path: str | None = None,
    checkpoint_path: str | None = None,
    **runner_kwargs: Any,
) -> LanguageModelSAERunnerConfig[Any]:
    """Build a SAELens `LanguageModelSAERunnerConfig` for an r1_plugin model and hook (a recipe, not a wrapper).

    `architecture` is any SAELens training architecture ("standard", "topk", "batchtopk", "jumprelu", ...),
    `sae_kwargs` its extra fields (e.g. `k` for topk/batchtopk: pass `sae_kwargs={"k": 64}`).
    `first_n_layers="auto"` loads only the layers up to the hook (R1 layer 37 -> 38 layers), through
    `model_from_pretrained_kwargs`; None loads the whole model. The dataset is the caller's
    (`train_sae(cfg, dataset=...)`); `dataset_path` stays empty so nothing is fetched from the Hub.
    Other `LanguageModelSAERunnerConfig` fields go in `runner_kwargs`.

    `device` and `dtype` are the SAE's (and its activation buffer's); the model loads on `llm_device` (default:
    `device`) in `model_from_pretrained_kwargs["dtype"]` (default float32), with `"n_devices": k` to spread it.
    SAELens moves each activation batch to the SAE's device, and the SAE casts it to its dtype.
    """
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    if training_tokens < train_batch_size_tokens:
        raise SAETrainingError(
            f"training_tokens ({training_tokens}) is less than one batch ({train_batch_size_tokens} tokens)"
        )
    sae_cfg = _sae_config(architecture, model_name, hook_name, d_in, d_sae, dtype, device, sae_kwargs)
    pretrained_kwargs = _model_kwargs(hook_name, first_n_layers, model_from_pretrained_kwargs)
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=model_name,
        model_class_name="HookedTransformer",
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        training_tokens=training_tokens,
        train_batch_size_tokens=train_batch_size_tokens,
        store_batch_size_prompts=store_batch_size_prompts,
        n_batches_in_buffer=n_batches_in_buffer,
        lr=lr,
        device=device,
        dtype=dtype,
        llm_device=llm_device,
        seed=seed,
        n_eval_batches=n_eval_batches,
        n_batches_for_norm_estimate=n_batches_for_norm_estimate,
        model_from_pretrained_kwargs=pretrained_kwargs,
        output_path=output_path,
        checkpoint_path=checkpoint_path,
        logger=LoggingConfig(
            log_to_wandb=log_to_wandb,
            wandb_project=wandb_project,
            run_name=run_name,
            wandb_log_frequency=wandb_log_frequency,
            eval_every_n_wandb_logs=eval_every_n_wandb_logs,
        ),
        **runner_kwargs,
    )


def _sae_config(
    architecture: str,
    model_name: str,
    hook_name: str,
    d_in: int | None,
    d_sae: int,
    dtype: str,
    device: str,
    sae_kwargs: dict[str, Any] | None,
) -> Any:
    """The SAELens training config of `architecture` (d_in read from the model's config when None)."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise SAETrainingError(
            f"unknown SAE architecture {architecture!r}: SAELens trains {sorted(SAE_TRAINING_CLASS_REGISTRY)}"
        )
    _, sae_cfg_cls = SAE_TRAINING_CLASS_REGISTRY[architecture]
    if d_in is None:
        d_in = infer_d_in(model_name, hook_name)
    try:
        return sae_cfg_cls(d_in=d_in, d_sae=d_sae, dtype=dtype, device=device, **(sae_kwargs or {}))
    except TypeError as exc:
        raise SAETrainingError(f"bad sae_kwargs for architecture {architecture!r}: {exc}") from exc


def _model_kwargs(
    hook_name: str, first_n_layers: int | Literal["auto"] | None, given: dict[str, Any] | None
) -> dict[str, Any]:
    """`model_from_pretrained_kwargs` for SAELens: `given`, plus the layers to load (checked to reach the hook)."""
    kwargs: dict[str, Any] = {"center_writing_weights": False}  # SAELens's own default
    kwargs.update(given or {})
    if first_n_layers == "auto":
        first_n_layers = layers_needed(hook_name)
    if first_n_layers is not None:
        needed = layers_needed(hook_name)
        if needed is not None and first_n_layers < needed:
            raise SAETrainingError(
                f"first_n_layers={first_n_layers} drops the layer of {hook_name!r}: it needs at least {needed}"
            )
        kwargs["first_n_layers"] = first_n_layers
    return kwargs


def _new_run_id() -> str:
    """A fresh W&B-style run id (8 lowercase alphanumerics), so the run directory can be found afterwards."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclass
class SAETrainingResult:
    """A trained SAE, where SAELens's W&B run was written (None when not logging), and the SAELens runner."""

    sae: TrainingSAE[Any]
    run_dir: Path | None
    wandb_id: str | None
    runner: Any = (
        None  # LanguageModelSAETrainingRunner: .model (the possibly truncated LLM), .activations_store
    )


@contextlib.contextmanager
def _run_for_sae_lens(
    cfg: LanguageModelSAERunnerConfig[Any], mode: str, wandb_dir: Path | None, runs: list[Any]
) -> Iterator[None]:
    """Open the W&B run SAELens logs to, before SAELens calls its plain `wandb.init(project=..., id=...)`.

    wandb hands the active run back to a second `wandb.init` (its default `reinit` outside notebooks), so the run
    gets r1_plugin's mode, dir and quiet, bounded settings without replacing `wandb.init` or changing the
    environment (wandb reads WANDB_MODE/WANDB_DIR only once per process). With mode "disabled" SAELens is told
    not to log (its `cfg.logger.log_to_wandb`, restored afterwards). In a notebook wandb's default finishes our
    run at SAELens's call and SAELens's own run takes the process defaults; `runs` then ends with SAELens's run.
    """
    import wandb

    from r1_plugin.tracking import ONLINE_INIT_TIMEOUT_S

    if mode == "disabled":
        saved = cfg.logger.log_to_wandb
        cfg.logger.log_to_wandb = False
        try:
            yield
        finally:
            cfg.logger.log_to_wandb = saved
        return
    run = wandb.init(
        project=cfg.logger.wandb_project,
        entity=cfg.logger.wandb_entity,
        config=cfg.to_dict(),
        name=cfg.logger.run_name,
        id=cfg.logger.wandb_id,
        mode=mode,
        dir=str(wandb_dir) if wandb_dir is not None else None,
        settings=wandb.Settings(silent=True, init_timeout=ONLINE_INIT_TIMEOUT_S),
    )
    runs.append(run)
    yield
    if wandb.run is not None and wandb.run is not run:
        runs.append(wandb.run)


def train_sae(
    cfg: LanguageModelSAERunnerConfig[Any],
    dataset: Dataset | Sequence[Any] | None = None,
    *,
    wandb_mode: str | None = None,
    wandb_dir: str | Path | None = None,
    override_model: Any = None,
) -> SAETrainingResult:
    """Run SAELens's `LanguageModelSAETrainingRunner` (its own W&B logging), offline-first and crash-safe.

    W&B mode follows `r1_plugin.tracking.resolve_mode` (offline without an API key; never prompts); `wandb_dir`
    (else WANDB_DIR as first read by wandb) holds the run, which r1_plugin opens before SAELens asks for one
    (`_run_for_sae_lens`; `wandb.init` itself is never replaced). If training
    raises or is interrupted, the W&B run SAELens opened is finished as failed (exit code 1, or 255 for
    Ctrl-C) so what it logged is kept; SAELens's SIGINT/SIGTERM handlers are removed again afterwards.
    """
    import wandb
    from sae_lens import LanguageModelSAETrainingRunner

    if dataset is None and not cfg.dataset_path:
        raise SAETrainingError(
            "no dataset: pass `dataset=` (e.g. tokenized_dataset(...)) or set cfg.dataset_path"
        )
    if dataset is not None and not hasattr(dataset, "column_names"):
        from datasets import Dataset

        dataset = Dataset.from_list(list(dataset))
    wandb_id: str | None = None
    mode = resolve_mode(wandb_mode) if cfg.logger.log_to_wandb else "disabled"
    if cfg.logger.log_to_wandb:
        wandb_id = cfg.logger.wandb_id or _new_run_id()
        cfg.logger.wandb_id = wandb_id
    out_dir = Path(wandb_dir) if wandb_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    runs: list[Any] = []
    with _run_for_sae_lens(cfg, mode, out_dir, runs):
        try:
            runner = LanguageModelSAETrainingRunner(
                cfg, override_dataset=dataset, override_model=override_model
            )
            sae = runner.run()
        except BaseException as exc:
            if runs and wandb.run is runs[-1]:  # SAELens only finishes its run on success
                code = 255 if isinstance(exc, KeyboardInterrupt) else 1
                with contextlib.suppress(Exception):
                    runs[-1].summary["error"] = f"{type(exc).__name__}: {exc}"
                runs[-1].finish(exit_code=code)
            raise
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    run_dir = Path(runs[-1].settings.sync_dir) if runs and mode != "disabled" else None
    return SAETrainingResult(sae=sae, run_dir=run_dir, wandb_id=wandb_id, runner=runner)


__all__ = [
    "DEFAULT_SAE_PROJECT",
    "SAETrainingError",
    "SAETrainingResult",
    "hook_layer",
    "infer_d_in",
    "layers_needed",
    "sae_runner_config",
    "tokenized_dataset",
    "train_sae",
]
