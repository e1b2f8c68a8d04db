"""Build the embedded tiny R1 assets: the model + tokenizer, its SAE, and its feature database.

`scripts/make_tiny_r1.py` is the command line; each stage is a function here so tests can check that the
committed files have exactly the structure these functions write (without retraining).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r1_plugin._patches.sae_lens_demo import register_tied_topk
from r1_plugin.demo import assets
from r1_plugin.demo.synthetic import (
    PUBLISHED_EXTRA_CONFIG,
    TOKENIZER_VOCAB_SIZE,
    Trace,
    TraceConfig,
    demo_questions,
    expected_checkpoint_keys,
    generate_traces,
    tiny_r1_config,
    tokenizer_corpus,
)
from r1_plugin.testing.tokenizers import EOS, build_tokenizer_files

# Seeds of the three datasets: the model's training traces, the SAE's training traces and the harvest prompts are
# disjoint draws, so the SAE and feature database never see the model's exact training sequences.
MODEL_DATA_SEED = 0
SAE_DATA_SEED = 1
HARVEST_DATA_SEED = 2

Log = Callable[[str], None]


@dataclass(frozen=True)
class ModelTrainingConfig:
    """Hyperparameters of the tiny R1's training run (CPU, a few minutes)."""

    seed: int = 0
    n_traces: int = 6000
    steps: int = 700
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    bias_update_rate: float = 1e-3  # DeepSeek-V3's auxiliary-loss-free balancing: e_score_correction_bias step
    dtype: str = "bfloat16"  # dtype on disk (R1's published weights are bf16/fp8)


def build_tokenizer_for(traces: Sequence[Trace]) -> dict[str, bytes]:
    """The tokenizer files (R1 family: special tokens, chat template) trained on the traces' text."""
    return build_tokenizer_files("r1", tokenizer_corpus(traces), TOKENIZER_VOCAB_SIZE)


def load_tokenizer_from_files(files: dict[str, bytes], folder: Path) -> Any:
    """Write tokenizer files to `folder` and load them with AutoTokenizer (as from_pretrained would)."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return AutoTokenizer.from_pretrained(str(folder))


def _lr_at(step: int, cfg: ModelTrainingConfig) -> float:
    """Linear warm-up then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class _ExpertLoad:
    """Counts how many tokens each router sends to each expert (forward hooks on every MoE gate)."""

    def __init__(self, model: Any) -> None:
        self.gates = [m for name, m in model.named_modules() if name.endswith("mlp.gate")]
        self.counts = [torch.zeros(g.num_experts) for g in self.gates]
        self.handles = [g.register_forward_hook(self._hook(i)) for i, g in enumerate(self.gates)]

    def _hook(self, index: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            indices = output[-1]
            self.counts[index] += torch.bincount(indices.flatten(), minlength=module.num_experts).float()

        return hook

    def rebalance(self, rate: float) -> None:
        """Auxiliary-loss-free balancing: lower the bias of overloaded experts, raise it for underloaded ones."""
        with torch.no_grad():
            for gate, counts in zip(self.gates, self.counts):
                gate.e_score_correction_bias += rate * torch.sign(counts.mean() - counts)
                counts.zero_()

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()


def _length_bucketed_batches(encoded: Sequence[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of similar length (less padding): shuffle, sort within windows of 8 batches, shuffle."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = batch_size * 8
    batches = []
    for start in range(0, len(order) - batch_size + 1, window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


def train_tiny_r1(
    traces: Sequence[Trace], tokenizer: Any, cfg: ModelTrainingConfig, log: Log = print
) -> tuple[Any, list[float]]:
    """Train HF's own `DeepseekV3ForCausalLM` on the traces (next-token loss on every non-pad token)."""
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(cfg.seed)
    model = DeepseekV3ForCausalLM(tiny_r1_config(tokenizer))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    encoded = [tokenizer(t.text(), add_special_tokens=False)["input_ids"] for t in traces]
    pad_id = tokenizer.convert_tokens_to_ids(EOS)
    order_rng = random.Random(cfg.seed)
    batches: list[list[int]] = []
    load = _ExpertLoad(model)
    losses: list[float] = []
    started = time.time()
    try:
        for step in range(cfg.steps):
            if not batches:
                batches = _length_bucketed_batches(encoded, cfg.batch_size, order_rng)
            batch = [encoded[i] for i in batches.pop()]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            load.rebalance(cfg.bias_update_rate)
            losses.append(loss.item())
            if step % 50 == 0 or step == cfg.steps - 1:
                log(f"  step {step:4d}/{cfg.steps}  loss {loss.item():.3f}  ({time.time() - started:.0f}s)")
    finally:
        load.remove()
    model.eval()
    return model, losses


def greedy_completion(model: Any, tokenizer: Any, question: str, max_new_tokens: int = 120) -> str:
    """The HF model's greedy completion of R1's rendered prompt for `question` (special tokens kept)."""
    from r1_plugin.chat import format_r1_prompt

    prompt = format_r1_prompt(tokenizer, question)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
            pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)


def evaluate_traces(model: Any, tokenizer: Any, traces: Sequence[Trace]) -> dict[str, float]:
    """Share of greedy completions that are well-formed R1 traces, and that reach the reference final answer."""
    well_formed = correct = 0
    for trace in traces:
        text = greedy_completion(model, tokenizer, trace.question)
        formed = text.startswith("Okay, so ") and "\n</think>\n\n" in text and text.endswith(EOS)
        well_formed += formed
        correct += formed and text.split("</think>")[-1].strip() == trace.answer + EOS
    return {"well_formed": well_formed / len(traces), "answer_correct": correct / len(traces)}


def _to_published_layout(folder: Path, config: Any) -> None:
    """Check the checkpoint is in R1's published per-expert layout (rewrite fused expert tensors if not)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    if any(k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj") for k in tensors):
        for key in [k for k in tensors if k.endswith("mlp.experts.gate_up_proj")]:
            base = key[: -len("gate_up_proj")]
            fused, down = tensors.pop(key), tensors.pop(base + "down_proj")
            gate, up = fused.chunk(2, dim=1)
            for e in range(fused.shape[0]):
                tensors[f"{base}{e}.gate_proj.weight"] = gate[e].contiguous()
                tensors[f"{base}{e}.up_proj.weight"] = up[e].contiguous()
                tensors[f"{base}{e}.down_proj.weight"] = down[e].contiguous()
        save_file(tensors, str(path), metadata=metadata)
    expected = expected_checkpoint_keys(config)
    if sorted(tensors) != expected:
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise RuntimeError(f"checkpoint keys differ from R1's layout: missing {missing[:5]}, extra {extra[:5]}")


def build_model(out_dir: Path = assets.MODEL_DIR, cfg: ModelTrainingConfig | None = None, log: Log = print) -> dict[str, Any]:
    """Stage `model`: traces -> tokenizer -> train the tiny R1 -> save config, safetensors and tokenizer files."""
    import tempfile

    cfg = cfg or ModelTrainingConfig()
    started = time.time()
    traces = generate_traces(cfg.n_traces, MODEL_DATA_SEED, TraceConfig())
    tok_files = build_tokenizer_for(traces)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer_from_files(tok_files, Path(tmp))
    log(f"tokenizer: {len(tokenizer)} tokens; {len(traces)} traces; training {cfg.steps} steps")
    model, losses = train_tiny_r1(traces, tokenizer, cfg, log)
    dtype = getattr(torch, cfg.dtype)
    model = model.to(dtype)
    model.generation_config.do_sample = False
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    config = json.loads((out_dir / "config.json").read_text())
    config.update(PUBLISHED_EXTRA_CONFIG)
    config.pop("transformers_version", None)
    (out_dir / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    gen = json.loads((out_dir / "generation_config.json").read_text())
    gen.pop("transformers_version", None)
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    _to_published_layout(out_dir, model.config)
    for name, data in tok_files.items():
        (out_dir / name).write_bytes(data)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    held_out = generate_traces(40, HARVEST_DATA_SEED + 100, TraceConfig())
    metrics = evaluate_traces(reloaded, tokenizer, held_out)
    samples = {q: greedy_completion(reloaded, tokenizer, q) for q in demo_questions()}
    info = {
        "generator": "scripts/make_tiny_r1.py --stage model",
        "training": cfg.__dict__,
        "data": {"seed": MODEL_DATA_SEED, "n_traces": len(traces), "trace_config": TraceConfig().__dict__},
        "loss": {"first": round(losses[0], 4), "last_50_mean": round(sum(losses[-50:]) / min(50, len(losses)), 4)},
        "greedy_eval_heldout": {k: round(v, 3) for k, v in metrics.items()},
        "greedy_samples": samples,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=list) + "\n")
    log(f"model saved to {out_dir} in {time.time() - started:.0f}s; held-out greedy eval {metrics}")
    for q, text in samples.items():
        log(f"--- {q}\n{text}")
    return info


# ---------------------------------------------------------------------------------------------------------------
# Stage `sae`: a top-k SAE on the tiny R1's blocks.2.hook_resid_post, trained with SAELens, saved in Goodfire's format.


@dataclass(frozen=True)
class SAETrainingConfig:
    """Hyperparameters of the tiny R1's SAE (SAELens top-k, encoder tied to the decoder like Goodfire's)."""

    seed: int = 0
    n_traces: int = 4000
    expansion_factor: int = 8
    k: int = 8
    context_size: int = 128
    training_tokens: int = 300_000
    train_batch_size_tokens: int = 1024
    lr: float = 2e-3
    n_eval_traces: int = 200


def goodfire_encode(state: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> torch.Tensor:
    """Goodfire's reference encode (per-token top-k): `topk(relu(x @ W + b_enc))`."""
    pre = torch.relu(x @ state["W"] + state["b_enc"])
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals)


def goodfire_decode(state: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """Goodfire's reference decode: `f @ W.T + b_dec`."""
    return f @ state["W"].T + state["b_dec"]


def sae_entry_yaml(d_in: int, d_sae: int, k: int, variance_explained: float) -> str:
    """The embedded SAE's description (SAELens's release schema, read by `assets.load_sae`; in no registry)."""
    return f"""# The embedded tiny R1's SAE: written by scripts/make_tiny_r1.py --stage sae. Loaded by path
# (r1_plugin.demo.assets.load_sae, SAE.load_from_disk); deliberately in no registry, so no name can download it.
{assets.SAE_NAME}:
  model: r1_plugin/assets/tiny-r1
  conversion_func: goodfire_r1
  trained_on: "synthetic R1-style arithmetic traces (r1_plugin.demo.synthetic); embedded demo SAE, not for research"
  links:
    model: r1_plugin/assets/tiny-r1
    weights: r1_plugin/assets/tiny-r1-sae
    code: scripts/make_tiny_r1.py
    feature_database: r1_plugin/assets/tiny-r1-features/{assets.SAE_SUBDIR}/
  config_overrides:
    architecture: topk
    d_in: {d_in}
    d_sae: {d_sae}
    k: {k}
    apply_b_dec_to_input: false
    normalize_activations: none
    hook_name: {assets.SAE_HOOK}
    model_name: {assets.MODEL_NAME}
    dataset_path: synthetic
    prepend_bos: true
  saes:
  - id: {assets.SAE_ID}
    path: {assets.SAE_FILE}
    l0: {k}
    variance_explained: {variance_explained:.3f}
"""


def _load_tiny_model(n_layers: int | None = None) -> Any:
    """The committed tiny R1 through `HookedTransformer.from_pretrained_no_processing(<its folder>)`."""
    kwargs = {"first_n_layers": n_layers} if n_layers else {}
    return assets.load_model(device="cpu", **kwargs).eval()


def _texts_without_bos(traces: Sequence[Trace]) -> list[str]:
    """Trace texts without the leading BOS (the SAE dataset builder inserts BOS itself)."""
    return [t.text(bos_token="") for t in traces]


def build_sae(
    out_dir: Path = assets.SAE_DIR,
    cfg: SAETrainingConfig | None = None,
    wandb_dir: Path | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Stage `sae`: train the SAE with SAELens (W&B offline), save `W`/`b_enc`/`b_dec` and the registry entry."""
    cfg = cfg or SAETrainingConfig()
    started = time.time()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(assets.MODEL_DIR))
    d_in = int(json.loads((assets.MODEL_DIR / "config.json").read_text())["hidden_size"])
    traces = generate_traces(cfg.n_traces + cfg.n_eval_traces, SAE_DATA_SEED, TraceConfig())
    train_traces, eval_traces = traces[: cfg.n_traces], traces[cfg.n_traces :]
    result = _train_sae(cfg, tokenizer, d_in, train_traces, wandb_dir, log)
    trained = result.sae
    state = {
        "W": trained.W_dec.detach().T.contiguous().float().clone(),
        "b_enc": trained.b_enc.detach().float().clone(),
        "b_dec": trained.b_dec.detach().float().clone(),
    }
    heldout = _heldout_check(state, trained, tokenizer, eval_traces, cfg.k)
    info = _save_sae(out_dir, state, cfg, d_in, heldout)
    log(f"SAE saved to {out_dir / assets.SAE_FILE}: held-out variance explained "
        f"{heldout['variance_explained']:.3f}, {heldout['alive_features']}/{heldout['d_sae']} alive "
        f"({time.time() - started:.0f}s); W&B offline run: {result.run_dir}")
    return info


def _train_sae(
    cfg: SAETrainingConfig, tokenizer: Any, d_in: int, traces: Sequence[Trace], wandb_dir: Path | None, log: Log
) -> Any:
    """Train the top-k SAE on `traces` with SAELens's runner (W&B offline); the `train_sae` result."""
    import os

    from r1_plugin.training import sae_runner_config, tokenized_dataset, train_sae

    dataset = tokenized_dataset(tokenizer, _texts_without_bos(traces), cfg.context_size)
    d_sae = d_in * cfg.expansion_factor
    runner_cfg = sae_runner_config(
        str(assets.MODEL_DIR),
        assets.SAE_HOOK,
        d_sae=d_sae,
        d_in=d_in,
        architecture=register_tied_topk(),  # SAELens's registries: written only by r1_plugin._patches
        sae_kwargs={"k": cfg.k, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": False},
        context_size=cfg.context_size,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        store_batch_size_prompts=16,
        n_batches_in_buffer=8,
        lr=cfg.lr,
        seed=cfg.seed,
        wandb_project="r1-plugin-tiny-r1-sae",
        run_name="tiny-r1-sae-" + assets.SAE_ID,
        wandb_log_frequency=10,
        eval_every_n_wandb_logs=10,
        n_eval_batches=4,
        n_batches_for_norm_estimate=4,
    )
    torch.manual_seed(cfg.seed)
    wandb_dir = wandb_dir or Path(os.environ.get("WANDB_DIR") or "build/make_tiny_r1")
    log(f"training SAE d_in={d_in} d_sae={d_sae} k={cfg.k} on {assets.SAE_HOOK} ({cfg.training_tokens} tokens)")
    return train_sae(runner_cfg, dataset, wandb_mode="offline", wandb_dir=wandb_dir)


def _heldout_check(
    state: dict[str, torch.Tensor], trained: Any, tokenizer: Any, traces: Sequence[Trace], k: int
) -> dict[str, Any]:
    """Check the Goodfire-format tensors compute what the trained SAE computes, and measure them on `traces`:
    tokens, variance explained, alive features and d_sae."""
    model = _load_tiny_model()
    acts = []
    with torch.no_grad():
        for trace in traces:
            ids = tokenizer(trace.text(), add_special_tokens=False, return_tensors="pt")["input_ids"]
            _, cache = model.run_with_cache(ids, names_filter=assets.SAE_HOOK)
            acts.append(cache[assets.SAE_HOOK][0, 1:])  # BOS excluded (its norm dwarfs the rest)
    x = torch.cat(acts)
    with torch.no_grad():
        f = goodfire_encode(state, x, k)
        recon = goodfire_decode(state, f)
        trained_recon = trained.decode(trained.encode(x))
    mismatch = float((recon - trained_recon).abs().max())
    if mismatch > 1e-4:
        raise RuntimeError(f"Goodfire-format SAE differs from the trained SAELens SAE by {mismatch}")
    variance_explained = float(1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return {
        "tokens": int(x.shape[0]),
        "variance_explained": variance_explained,
        "alive_features": int((f > 0).any(0).sum()),
        "d_sae": int(f.shape[-1]),
    }


def _save_sae(
    out_dir: Path, state: dict[str, torch.Tensor], cfg: SAETrainingConfig, d_in: int, heldout: dict[str, Any]
) -> dict[str, Any]:
    """Write the SAE folder (weights, config.json, build_info.json) and its registry entry; the build info."""
    variance_explained = heldout["variance_explained"]
    target = out_dir / assets.SAE_FILE
    if out_dir.exists():
        shutil.rmtree(out_dir)
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    (target.parent / "config.json").write_text(
        json.dumps({"d_in": d_in, "expansion_factor": cfg.expansion_factor, "k": cfg.k}) + "\n"
    )
    info = {
        "generator": "scripts/make_tiny_r1.py --stage sae",
        "trainer": "SAELens LanguageModelSAETrainingRunner (top-k, encoder tied to decoder), W&B offline",
        "training": cfg.__dict__,
        "hook_name": assets.SAE_HOOK,
        "data": {"seed": SAE_DATA_SEED, "n_traces": cfg.n_traces},
        "heldout": {**heldout, "variance_explained": round(variance_explained, 4)},
    }
    (target.parent / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    assets.SAE_ENTRY_FILE.write_text(sae_entry_yaml(d_in, heldout["d_sae"], cfg.k, variance_explained))
    return info


# ---------------------------------------------------------------------------------------------------------------
# Stage `features`: harvest a small feature database (Goodfire's schema) and label features by a simple heuristic.

HEURISTIC_MODEL_NAME = "heuristic: most common activating token (r1_plugin.demo.build)"
HEURISTIC_PROMPT_VERSION = "heuristic-v1"


@dataclass(frozen=True)
class FeatureHarvestConfig:
    """How much the feature database holds."""

    n_prompts: int = 120
    top_k: int = 12
    batch_size: int = 16
    examples_for_label: int = 12


def _category(token: str, next_token: str, before: str) -> str | None:
    """The reasoning role of an activating token from simple text rules, or None."""
    tok = token.strip()
    sentence = before.rsplit("\n\n", 1)[-1]
    if tok == "Wait":
        return "backtracking ('Wait')"
    if next_token.strip() == "Wait":
        return "before backtracking (next token 'Wait')"
    if "Wait" in sentence:
        return "inside a correction or re-check sentence (after 'Wait')"
    if tok == "Okay" or (sentence.lstrip("\n").startswith("Okay") and "<think>" in before[-200:]):
        return "response prefix ('Okay, so ...')"
    if tok == "</think>":
        return "end of thinking ('</think>')"
    if "</think>" in before:
        return "final answer"
    if tok.isdigit():
        return "number"
    return None


def heuristic_label(examples: Sequence[Any]) -> tuple[str, float]:
    """(label, quality) from a feature's top examples: the most common activating token and reasoning role.

    quality is the share of the examples that agree with the label's role (or token): a consistency score, not
    Goodfire's LLM-judged quality.
    """
    from collections import Counter

    if not examples:
        return "dead feature", 0.0
    tokens = Counter(e.token for e in examples)
    roles = Counter(
        _category(e.token, e.tokens[e.position + 1] if 0 <= e.position < len(e.tokens) - 1 else "", e.before)
        for e in examples
    )
    token, n_token = tokens.most_common(1)[0]
    role, n_role = roles.most_common(1)[0]
    if role is not None and 2 * n_role >= len(examples):
        return f"{role}; most common token {token!r}", n_role / len(examples)
    return f"token {token!r}", n_token / len(examples)


def _write_sqlite_labels(path: Path, rows: Sequence[Any]) -> None:
    """An `autointerp` table in Goodfire's schema, as a SQLite file (like their autointerp.db)."""
    import sqlite3

    path.unlink(missing_ok=True)
    con = sqlite3.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE autointerp (feature_id INTEGER PRIMARY KEY, label TEXT, quality REAL, "
            "interestingness REAL, model_name TEXT, prompt_version TEXT)"
        )
        con.executemany(
            "INSERT INTO autointerp VALUES (?, ?, ?, ?, ?, ?)",
            [(r.feature_id, r.label, r.quality, r.interestingness, r.model_name, r.prompt_version) for r in rows],
        )
        con.commit()
    finally:
        con.close()


def build_features(
    out_dir: Path = assets.FEATURES_DIR, cfg: FeatureHarvestConfig | None = None, log: Log = print
) -> dict[str, Any]:
    """Stage `features`: run the tiny R1 + SAE over held-out traces with the harvester; label; write DuckDB files."""
    import tempfile

    from r1_plugin.features import FeatureDB, FeatureLabel, harvest, merge_shards

    cfg = cfg or FeatureHarvestConfig()
    started = time.time()
    model = _load_tiny_model()
    sae = assets.load_sae(device="cpu")
    traces = generate_traces(cfg.n_prompts, HARVEST_DATA_SEED, TraceConfig())
    prompts = [model.tokenizer(t.text(), add_special_tokens=False)["input_ids"] for t in traces]
    labels_path, acts_path = assets.FEATURES_LABELS, assets.FEATURES_ACTIVATIONS
    with tempfile.TemporaryDirectory() as tmp:
        result = harvest(model, sae, prompts, Path(tmp) / "shards", top_k=cfg.top_k, batch_size=cfg.batch_size,
                         progress=False)
        unlabelled = merge_shards(result.shard_dir, Path(tmp) / "unlabelled.ddb")
        with FeatureDB(activations=unlabelled) as db:
            d_sae = int(sae.W_dec.shape[0])
            labels = {}
            for fid in range(d_sae):
                label, quality = heuristic_label(db.top_examples(fid, k=cfg.examples_for_label, context=12))
                labels[fid] = FeatureLabel(fid, label, round(quality, 3), None, HEURISTIC_MODEL_NAME,
                                           HEURISTIC_PROMPT_VERSION)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        acts_path.parent.mkdir(parents=True)
        merge_shards(result.shard_dir, acts_path, labels=labels)
    # Goodfire ship the labels as their own file (autointerp.db, SQLite) beside the activations: do the same.
    _write_sqlite_labels(labels_path, [labels[f] for f in sorted(labels)])
    with FeatureDB(labels=labels_path, activations=acts_path) as db:
        hits = db.search("backtracking", limit=5)
    summary = {
        "generator": "scripts/make_tiny_r1.py --stage features",
        "prompts": cfg.n_prompts,
        "data_seed": HARVEST_DATA_SEED,
        "top_k": cfg.top_k,
        "labeller": HEURISTIC_MODEL_NAME,
        "dead": sum(v.label == "dead feature" for v in labels.values()),
        "backtracking_features": [(h.feature_id, h.label, h.quality) for h in hits],
    }
    (out_dir / assets.SAE_SUBDIR / "build_info.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"feature database written to {out_dir} ({time.time() - started:.0f}s): {summary['dead']} dead; "
        f"backtracking features {summary['backtracking_features']}")
    return summary
