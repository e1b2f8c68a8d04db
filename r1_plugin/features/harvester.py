"""Build a feature database in Goodfire's schema by running a model + SAE over prompts.

`harvest` runs a HookedTransformer over a block of prompts in batches, encodes the hook's activations with the
SAE and keeps, per feature, the top-k activations seen so far (a running `torch.topk` merge over all features
at once). It writes Parquet shards into one directory per shard, checkpointing as it goes, so an interrupted
run resumes where it stopped and several machines can each harvest one shard (`shard_index`, `num_shards`) of
the same prompt list. `merge_shards` lets DuckDB merge the shards into one `.ddb` with the `tokens`,
`activations` and `autointerp` tables that `FeatureDB` reads.

Shard directory layout (`<out_dir>/shard-<i>-of-<n>/`):

    progress.json             fingerprint, prompt range, prompts done, complete flag
    state.pt                  running top-k (values, sequence ids, token indices), [d_sae, top_k] each
    tokens-<first_seq>.parquet  tokens of the prompts done, one file per checkpoint
    activations.parquet       the final top-k rows (written when the shard is complete)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import torch

from r1_plugin.features.db import FeatureDB, FeatureDBError, FeatureLabel
from r1_plugin.hook_names import hook_layer, sae_hook_name_or_none
from r1_plugin.saes.placement import encode_on_sae

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
STATE_FILE = "state.pt"
ACTIVATIONS_FILE = "activations.parquet"
DEFAULT_LABEL = "unlabelled"
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class HarvestConfig:
    """What a harvest computes; two shards merge only if their configs agree."""

    hook_name: str
    top_k: int = 64  # activations kept per feature
    max_length: int = 512  # tokens per prompt; longer prompts are truncated
    prepend_bos: bool = True  # for string prompts not already starting with BOS; token-id prompts are used as given
    min_strength: float = 0.0  # only activations strictly above this are recorded
    exclude_special: bool = True  # BOS and the tokenizer's special tokens never reach the SAE nor the top-k


@dataclass
class HarvestResult:
    """Where a shard was written and what it holds."""

    shard_dir: Path
    prompts: int  # prompts in this shard
    tokens: int  # tokens harvested in this call (0 when resuming a complete shard)
    seconds: float
    complete: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Harvest throughput of this call."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def shard_range(n_prompts: int, shard_index: int, num_shards: int) -> tuple[int, int]:
    """The contiguous [start, end) block of prompt indices that shard `shard_index` of `num_shards` harvests."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(
            f"shard_index must be in [0, {num_shards}), got {shard_index} (num_shards={num_shards})"
        )
    return n_prompts * shard_index // num_shards, n_prompts * (shard_index + 1) // num_shards


def shard_dirname(shard_index: int, num_shards: int) -> str:
    """The directory name of one shard."""
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids of BOS and every token the tokenizer marks special (chat tags, EOS, padding; R1's `<think>` is not)."""
    if tokenizer is None:
        return []
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return sorted(ids)


def kept_token_mask(
    tokenizer: Any, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, exclude_special: bool = True
) -> torch.Tensor:
    """Bool [batch, pos]: real tokens (attention_mask nonzero) that are not BOS/special when `exclude_special`.

    Pass it to a batch top-k SAE as `sae.encode(acts, attention_mask=kept_token_mask(...))` so padding and special
    tokens take no part in the `k x n_tokens` budget, as `harvest` does.
    """
    kept = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if exclude_special:
        special = torch.tensor(special_token_ids(tokenizer), dtype=tokens.dtype, device=tokens.device)
        kept = kept & ~torch.isin(tokens, special)
    return kept


def tokenize_prompt(model: Any, prompt: str, prepend_bos: bool = True) -> list[int]:
    """Token ids of a text prompt with at most one BOS: text that already starts with BOS (R1's chat helpers
    emit it, e.g. `format_r1_prompt`) gets none added."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token", None)
    if prepend_bos and bos and prompt.startswith(bos):
        prepend_bos = False
    return model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0].tolist()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fingerprint(config: HarvestConfig, prompts: Sequence[Prompt], start: int, end: int, n_total: int) -> str:
    """A hash of the config and this shard's prompts: a resumed run must be harvesting the same thing."""
    digest = hashlib.sha256(json.dumps([asdict(config), start, end, n_total]).encode())
    for prompt in prompts[start:end]:
        digest.update(
            b"\x00s" + prompt.encode() if isinstance(prompt, str) else b"\x00t" + str(list(prompt)).encode()
        )
    return digest.hexdigest()


class RunningTopK:
    """Per-feature top-k activations over a stream of batches, all features at once (no loop over features).

    State: `values`, `seqs`, `toks`, each [d_sae, k], every feature's row ranked by (strength DESC,
    sequence_id, token_idx), the order `merge_shards` uses in SQL; empty slots hold -inf. Batches must come in
    (sequence_id, token_idx) order (each batch after the previous one, rows in order), as `harvest` feeds them:
    then one stable descending sort per feature row of [state | new entries] breaks ties exactly like the SQL.
    Only entries that can enter (strength > min_strength and >= the feature's current k-th) are looked at, a
    small fraction of a sparse SAE's batch.
    """

    def __init__(self, k: int, min_strength: float = 0.0) -> None:
        self.k, self.min_strength = int(k), float(min_strength)
        self.values: torch.Tensor | None = None
        self.seqs: torch.Tensor | None = None
        self.toks: torch.Tensor | None = None
        self.last: tuple[int, int] | None = None  # (sequence_id, token_idx) of the last row seen

    def update(self, acts: torch.Tensor, seq_ids: torch.Tensor, tok_idx: torch.Tensor) -> None:
        """Merge a batch: `acts` [n_tokens, d_sae] with the sequence id and token index of each row."""
        if acts.shape[0] == 0:
            return
        if self.values is None:
            d_sae = acts.shape[1]
            self.values = torch.full((d_sae, self.k), float("-inf"), device=acts.device)
            self.seqs = torch.zeros((d_sae, self.k), dtype=torch.long, device=acts.device)
            self.toks = torch.zeros((d_sae, self.k), dtype=torch.long, device=acts.device)
        elif self.values.device != acts.device:  # a checkpoint restored on the CPU, a harvest on a GPU
            self.values, self.seqs, self.toks = (t.to(acts.device) for t in (self.values, self.seqs, self.toks))
        assert self.seqs is not None and self.toks is not None
        seq_ids, tok_idx = seq_ids.to(acts.device).long(), tok_idx.to(acts.device).long()
        order_key = seq_ids * (int(tok_idx.max()) + 1) + tok_idx
        first = (int(seq_ids[0]), int(tok_idx[0]))
        if bool((order_key[1:] <= order_key[:-1]).any()) or (self.last is not None and first <= self.last):
            raise ValueError("RunningTopK.update needs rows in increasing (sequence_id, token_idx) order")
        self.last = (int(seq_ids[-1]), int(tok_idx[-1]))
        floor = torch.nextafter(torch.tensor(self.min_strength), torch.tensor(float("inf"))).to(acts.device)
        entrants = acts >= torch.maximum(
            self.values[:, -1], floor
        )  # > min_strength and >= the k-th: one pass
        rows, feats = entrants.nonzero(as_tuple=True)  # row-major: in token order
        if rows.numel() == 0:
            return
        by_feat = torch.argsort(feats, stable=True)  # group by feature, keeping token order
        rows, feats = rows[by_feat], feats[by_feat]
        _, counts = torch.unique_consecutive(feats, return_counts=True)
        slot = torch.arange(feats.numel(), device=feats.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        width = int(counts.max())
        d_sae = self.values.shape[0]
        new_vals = torch.full((d_sae, width), float("-inf"), device=acts.device)
        new_rows = torch.zeros((d_sae, width), dtype=torch.long, device=acts.device)
        new_vals[feats, slot] = acts[rows, feats].float()
        new_rows[feats, slot] = rows
        all_vals = torch.cat(
            [self.values, new_vals], dim=1
        )  # [d_sae, k + width]: state first, then tokens in order
        all_seqs = torch.cat([self.seqs, seq_ids[new_rows]], dim=1)
        all_toks = torch.cat([self.toks, tok_idx[new_rows]], dim=1)
        top_vals, idx = torch.sort(all_vals, dim=1, descending=True, stable=True)
        self.values = top_vals[:, : self.k].contiguous()
        keep = idx[:, : self.k]
        self.seqs = all_seqs.gather(1, keep)
        self.toks = all_toks.gather(1, keep)

    def rows(self) -> dict[str, torch.Tensor]:
        """The recorded activations as flat columns: feature_id, sequence_id, token_idx, strength."""
        if self.values is None:
            empty = torch.zeros(0, dtype=torch.long)
            return {"feature_id": empty, "sequence_id": empty, "token_idx": empty, "strength": empty.float()}
        vals, seqs, toks = self.values.cpu(), self.seqs.cpu(), self.toks.cpu()
        keep = torch.isfinite(vals)
        features = torch.arange(vals.shape[0])[:, None].expand_as(vals)
        return {
            "feature_id": features[keep],
            "sequence_id": seqs[keep],
            "token_idx": toks[keep],
            "strength": vals[keep],
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors for a checkpoint."""
        assert self.values is not None and self.seqs is not None and self.toks is not None
        last = torch.tensor(self.last if self.last is not None else (-1, -1))
        return {"values": self.values.cpu(), "seqs": self.seqs.cpu(), "toks": self.toks.cpu(), "last": last}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a checkpoint."""
        self.values, self.seqs, self.toks = state["values"], state["seqs"], state["toks"]
        last = tuple(int(v) for v in state["last"])
        self.last = None if last == (-1, -1) else (last[0], last[1])


class _Harvester:
    """One shard's harvest: tokenising, the forward pass, the running top-k and the checkpoint files."""

    def __init__(self, model: Any, sae: Any, config: HarvestConfig, shard_dir: Path) -> None:
        self.model, self.sae, self.config, self.shard_dir = model, sae, config, shard_dir
        self.tokenizer = getattr(model, "tokenizer", None)
        self.layer = hook_layer(config.hook_name)
        self.decoded: dict[int, str] = {}
        self.topk = RunningTopK(config.top_k, config.min_strength)
        self._con = duckdb.connect(":memory:")

    # ---------------------------------------------------------------- tokens
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt, truncated to max_length (strings via the model's tokenizer)."""
        if isinstance(prompt, str):
            ids = tokenize_prompt(self.model, prompt, self.config.prepend_bos)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt: every prompt needs at least one token")
        return ids[: self.config.max_length]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Decoded text of each token id (cached per id: the vocabulary is small, the corpus is not)."""
        flat = ids.tolist()
        if self.tokenizer is None:
            return [str(i) for i in flat]
        for tid in set(flat) - self.decoded.keys():
            self.decoded[tid] = self.tokenizer.decode([tid], clean_up_tokenization_spaces=False)
        return [self.decoded[t] for t in flat]

    # ---------------------------------------------------------------- compute
    @torch.inference_mode()
    def sae_acts(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts [n_kept, d_sae], kept mask [batch, pos]) for a right-padded batch: padding, and with
        exclude_special BOS and special tokens, never reach the SAE (nor a batch top-k SAE's k x n budget)."""
        lengths = torch.tensor([len(ids) for ids in batch])
        width = int(lengths.max())
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for row, ids in enumerate(batch):
            tokens[row, : len(ids)] = torch.tensor(ids)
        valid = torch.arange(width)[None, :] < lengths[:, None]
        captured: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            captured["x"] = act.detach()

        device = getattr(getattr(self.model, "cfg", None), "device", None) or "cpu"
        kwargs: dict[str, Any] = {"attention_mask": valid.long().to(device)}
        if self.layer is not None:
            kwargs["stop_at_layer"] = self.layer + 1
        else:
            kwargs["return_type"] = None
        self.model.run_with_hooks(tokens.to(device), fwd_hooks=[(self.config.hook_name, grab)], **kwargs)
        if "x" not in captured:
            raise FeatureDBError(
                f"hook {self.config.hook_name!r} never ran: is it a hook point of this model?"
            )
        kept = kept_token_mask(self.tokenizer, tokens, valid, self.config.exclude_special)
        x = captured["x"][kept.to(captured["x"].device)]  # [n_kept, d_in], padding (and special tokens) dropped
        acts = encode_on_sae(self.sae, x, out_dtype=torch.float32)  # on the SAE's device/dtype, back beside x
        return acts, kept

    # ---------------------------------------------------------------- files
    def load_state(self) -> int | None:
        """Restore the running top-k from the last checkpoint (weights_only: plain tensors); returns the number
        of prompts it holds (None for a state written without that count)."""
        state = torch.load(self.shard_dir / STATE_FILE, map_location="cpu", weights_only=True)
        self.topk.load_state_dict(state)
        return int(state["done"]) if "done" in state else None

    def save_checkpoint(self, token_rows: list[Any], first_seq: int, progress: dict[str, Any]) -> None:
        """Write the new tokens, then the top-k state, then progress.json (last, so a crash leaves the old one)."""
        import pandas as pd

        if token_rows:
            frame = pd.concat(token_rows, ignore_index=True)  # noqa: F841 (read by DuckDB by name)
            target = self.shard_dir / f"tokens-{first_seq:012d}.parquet"
            tmp = target.with_name(target.name + ".tmp")
            self._con.execute("COPY (SELECT * FROM frame) TO ? (FORMAT parquet)", [str(tmp)])
            os.replace(tmp, target)
        if self.topk.values is not None:
            tmp = self.shard_dir / (STATE_FILE + ".tmp")
            # The prompt count goes with the state: a crash between this write and progress.json's leaves the
            # state ahead of progress.json, and the resume must continue from the state.
            torch.save({**self.topk.state_dict(), "done": torch.tensor(int(progress["done"]))}, tmp)
            os.replace(tmp, self.shard_dir / STATE_FILE)
        _atomic_write_bytes(self.shard_dir / PROGRESS_FILE, json.dumps(progress, indent=1).encode())

    def write_activations(self) -> int:
        """Write the final top-k as activations.parquet (only strengths above min_strength); returns rows."""
        import pandas as pd

        cols = self.topk.rows()
        frame = pd.DataFrame(
            {
                "feature_id": cols["feature_id"].numpy().astype("int32"),
                "sequence_id": cols["sequence_id"].numpy().astype("int64"),
                "token_idx": cols["token_idx"].numpy().astype("int32"),
                "strength": cols["strength"].numpy().astype("float32"),
            }
        )
        tmp = self.shard_dir / (ACTIVATIONS_FILE + ".tmp")
        self._con.register("acts_frame", frame)
        self._con.execute(
            "COPY (SELECT feature_id::INTEGER AS feature_id, sequence_id::BIGINT AS sequence_id, "
            "token_idx::INTEGER AS token_idx, strength::FLOAT AS strength FROM acts_frame) TO ? (FORMAT parquet)",
            [str(tmp)],
        )
        self._con.unregister("acts_frame")
        os.replace(tmp, self.shard_dir / ACTIVATIONS_FILE)
        return len(frame)


def harvest(
    model: Any,
    sae: Any,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    hook_name: str | None = None,
    top_k: int = 64,
    batch_size: int = 8,
    max_length: int = 512,
    prepend_bos: bool = True,
    min_strength: float = 0.0,
    exclude_special: bool = True,
    shard_index: int = 0,
    num_shards: int = 1,
    checkpoint_every: int = 16,
    progress: bool = True,
    tracker: Any | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> HarvestResult:
    """Harvest one shard of `prompts` (strings or token-id lists) into `out_dir/shard-<i>-of-<n>/`, resumably.

    The sequence id of a prompt is its index in `prompts`, so shards from several machines merge without
    clashes. Rerunning the same call after an interruption continues from the last checkpoint (every
    `checkpoint_every` batches); rerunning a finished shard does nothing. `tracker` (r1_plugin.tracking) gets
    throughput metrics at each checkpoint; `on_batch(prompts_done)` is called after every batch.

    Text prompts get one BOS (`prepend_bos`), none added when the text already starts with it (chat-formatted
    text from `format_r1_prompt` does). With `exclude_special` (default) BOS and the tokenizer's special tokens
    are left out of the SAE's input and the top-k: R1's BOS carries massive activations and would dominate
    every feature. They stay in the `tokens` table, so token indices always count from the prompt's start.
    """
    from tqdm.auto import tqdm

    hook_name = hook_name or sae_hook_name_or_none(sae)
    if not hook_name:
        raise ValueError("hook_name is needed: the SAE's config does not name the hook it reads")
    if top_k < 1 or batch_size < 1 or max_length < 1 or checkpoint_every < 1:
        raise ValueError("top_k, batch_size, max_length and checkpoint_every must all be >= 1")
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and hook_name not in hook_dict:
        near = [h for h in hook_dict if h.endswith(hook_name.rsplit(".", 1)[-1])][:5]
        raise FeatureDBError(
            f"hook {hook_name!r} is not a hook point of this model (e.g. {near or list(hook_dict)[:5]})"
        )
    config = HarvestConfig(hook_name, top_k, max_length, prepend_bos, float(min_strength), bool(exclude_special))
    n_total = len(prompts)
    start, end = shard_range(n_total, shard_index, num_shards)
    shard_dir = Path(out_dir) / shard_dirname(shard_index, num_shards)
    shard_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, prompts, start, end, n_total)
    worker = _Harvester(model, sae, config, shard_dir)

    done = 0
    progress_path = shard_dir / PROGRESS_FILE
    if progress_path.is_file():
        saved = json.loads(progress_path.read_text())
        if saved.get("fingerprint") != fingerprint:
            raise FeatureDBError(
                f"{shard_dir} holds a harvest of other prompts or settings ({saved.get('config')}); "
                "use a new out_dir, or delete that shard directory to start over"
            )
        done = int(saved["done"])
        if saved.get("complete"):
            return HarvestResult(shard_dir, end - start, 0, 0.0, True)
        if done and (shard_dir / STATE_FILE).is_file():
            state_done = worker.load_state()
            if state_done is not None and state_done > done:
                done = state_done  # crashed after writing state.pt (and its tokens file), before progress.json
        else:
            done = 0
    for leftover in shard_dir.glob("tokens-*.parquet"):  # written after the last recorded checkpoint
        if int(leftover.stem.split("-")[1]) >= start + done:
            leftover.unlink()
    for tmp in shard_dir.glob("*.tmp"):
        tmp.unlink()

    def progress_record(n_done: int, complete: bool) -> dict[str, Any]:
        return {
            "fingerprint": fingerprint,
            "config": asdict(config),
            "n_prompts_total": n_total,
            "start": start,
            "end": end,
            "done": n_done,
            "complete": complete,
            "d_sae": None if worker.topk.values is None else int(worker.topk.values.shape[0]),
            "model_name": getattr(getattr(model, "cfg", None), "model_name", None),
            "shard_index": shard_index,
            "num_shards": num_shards,
        }

    import pandas as pd

    t0 = time.perf_counter()
    n_tokens = 0
    pending: list[pd.DataFrame] = []
    pending_first = start + done
    batches_since = 0
    bar = tqdm(
        total=end - start, initial=done, unit="prompt", desc=f"harvest {shard_dir.name}", disable=not progress
    )
    try:
        for b0 in range(start + done, end, batch_size):
            ids = [worker.tokenize(p) for p in prompts[b0 : min(b0 + batch_size, end)]]
            acts, kept = worker.sae_acts(ids)
            rows, cols = kept.nonzero(as_tuple=True)
            worker.topk.update(acts, rows + b0, cols)
            seq_ids = torch.cat([torch.full((len(seq),), b0 + i) for i, seq in enumerate(ids)])
            cols = torch.cat([torch.arange(len(seq)) for seq in ids])  # every token goes in the tokens table
            flat_ids = torch.tensor([t for seq in ids for t in seq])
            pending.append(
                pd.DataFrame(
                    {
                        "sequence_id": seq_ids.numpy().astype("int64"),
                        "token_idx": cols.numpy().astype("int32"),
                        "token": flat_ids.numpy().astype("int32"),
                        "decoded_token": worker.decode(flat_ids),
                    }
                )
            )
            n_tokens += len(flat_ids)
            done = min(b0 + batch_size, end) - start
            batches_since += 1
            bar.update(len(ids))
            elapsed = time.perf_counter() - t0
            bar.set_postfix(tok_s=f"{n_tokens / elapsed:.0f}" if elapsed > 0 else "-")
            if on_batch is not None:
                on_batch(done)
            if batches_since >= checkpoint_every and start + done < end:
                worker.save_checkpoint(pending, pending_first, progress_record(done, False))
                pending, pending_first, batches_since = [], start + done, 0
                if tracker is not None:
                    tracker.log_metrics(
                        {"harvest/prompts_done": done, "harvest/tokens_per_s": n_tokens / elapsed}
                    )
        worker.save_checkpoint(pending, pending_first, progress_record(done, False))
        n_rows = worker.write_activations()
        worker.save_checkpoint([], pending_first, progress_record(done, True))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    result = HarvestResult(shard_dir, end - start, n_tokens, seconds, True, {"activation_rows": n_rows})
    if tracker is not None:
        tracker.log_metrics({"harvest/prompts_done": done, "harvest/tokens_per_s": result.tokens_per_s})
    return result


# -------------------------------------------------------------------------------------------- merging
def _shard_dirs(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard directories from a list, or from a harvest out_dir holding shard-* directories."""
    if isinstance(shards, (str, Path)):
        root = Path(shards)
        if (root / PROGRESS_FILE).is_file():
            return [root]
        found = sorted(p.parent for p in root.glob(f"*/{PROGRESS_FILE}"))
        if not found:
            raise FeatureDBError(f"no harvest shards (directories with {PROGRESS_FILE}) under {root}")
        return found
    dirs = [Path(s) for s in shards]
    if not dirs:
        raise FeatureDBError("merge_shards needs at least one shard directory")
    return dirs


def _read_labels(labels: Mapping[int, str | FeatureLabel] | str | Path | None) -> list[tuple[Any, ...]]:
    """Label rows (feature_id, label, quality, interestingness, model_name, prompt_version) to store."""
    if labels is None:
        return []
    if isinstance(labels, (str, Path)):
        with FeatureDB(labels=labels) as db:
            return [
                (r.feature_id, r.label, r.quality, r.interestingness, r.model_name, r.prompt_version)
                for r in (db.get(f) for f in db.feature_ids())
            ]
    rows = []
    for fid, value in labels.items():
        if isinstance(value, FeatureLabel):
            rows.append(
                (
                    int(fid),
                    value.label,
                    value.quality,
                    value.interestingness,
                    value.model_name,
                    value.prompt_version,
                )
            )
        else:
            rows.append((int(fid), str(value), None, None, None, None))
    return rows


def merge_shards(
    shards: str | Path | Sequence[str | Path],
    out_path: str | Path,
    *,
    labels: Mapping[int, str | FeatureLabel] | str | Path | None = None,
    top_k: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge complete harvest shards into one DuckDB file in Goodfire's schema (plus a `harvest_info` table).

    `activations` keeps the global top-k per feature (ties by sequence_id, token_idx), stored sorted by
    (feature_id, strength DESC) so a feature's rows sit together and DuckDB's zone maps find them fast;
    `tokens` is sorted by (sequence_id, token_idx). `autointerp` has one row per feature: the given label
    (a {feature_id: label} mapping or a labels file) or 'unlabelled'.
    """
    import pandas as pd

    dirs = _shard_dirs(shards)
    records = []
    for d in dirs:
        path = d / PROGRESS_FILE
        if not path.is_file():
            raise FeatureDBError(f"{d} is not a harvest shard (no {PROGRESS_FILE})")
        rec = json.loads(path.read_text())
        if not rec.get("complete") or not (d / ACTIVATIONS_FILE).is_file():
            raise FeatureDBError(
                f"shard {d} is incomplete ({rec.get('done')}/{rec.get('end', 0) - rec.get('start', 0)} prompts): "
                "rerun the same harvest call to finish it"
            )
        records.append(rec)
    configs = {json.dumps(r["config"], sort_keys=True) for r in records}
    if len(configs) > 1:
        raise FeatureDBError(f"shards were harvested with different settings: {sorted(configs)}")
    d_saes = {r["d_sae"] for r in records if r["d_sae"] is not None}
    if len(d_saes) > 1:
        raise FeatureDBError(f"shards come from SAEs of different widths: {sorted(d_saes)}")
    spans = sorted((r["start"], r["end"], str(d)) for r, d in zip(records, dirs))
    for (s0, e0, d0), (s1, e1, d1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise FeatureDBError(
                f"shards {d0} and {d1} cover overlapping prompts ([{s0},{e0}) and [{s1},{e1}))"
            )
    config = records[0]["config"]
    k = int(top_k if top_k is not None else config["top_k"])
    d_sae = d_saes.pop() if d_saes else 0

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FeatureDBError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    token_files = sorted(str(f) for d in dirs for f in d.glob("tokens-*.parquet"))
    act_files = [str(d / ACTIVATIONS_FILE) for d in dirs]
    con = duckdb.connect(str(tmp))
    try:
        con.execute(
            "CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)"
        )
        if token_files:
            con.execute(
                "INSERT INTO tokens SELECT sequence_id, token_idx, token, decoded_token FROM read_parquet(?) "
                "ORDER BY sequence_id, token_idx",
                [token_files],
            )
        con.execute(
            "CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, strength FLOAT)"
        )
        con.execute(
            "INSERT INTO activations SELECT feature_id, sequence_id, token_idx, strength FROM read_parquet(?) "
            "QUALIFY row_number() OVER (PARTITION BY feature_id ORDER BY strength DESC, sequence_id, token_idx) <= ? "
            "ORDER BY feature_id, strength DESC, sequence_id, token_idx",
            [act_files, k],
        )
        label_rows = _read_labels(labels)
        label_frame = pd.DataFrame(  # noqa: F841 (read by DuckDB by name)
            label_rows,
            columns=["feature_id", "label", "quality", "interestingness", "model_name", "prompt_version"],
        ).astype(
            {
                "feature_id": "int64",
                "label": object,
                "quality": "float64",
                "interestingness": "float64",
                "model_name": object,
                "prompt_version": object,
            }
        )
        con.execute(
            "CREATE TABLE autointerp (feature_id INTEGER, label VARCHAR, quality DOUBLE, interestingness DOUBLE, "
            "model_name VARCHAR, prompt_version VARCHAR)"
        )
        con.execute(
            "INSERT INTO autointerp SELECT f.range, coalesce(l.label, ?), l.quality, l.interestingness, "
            "l.model_name, l.prompt_version FROM range(?) f LEFT JOIN label_frame l ON l.feature_id = f.range "
            "ORDER BY f.range",
            [DEFAULT_LABEL, max(d_sae, 1 + max((r[0] for r in label_rows), default=-1))],
        )
        con.execute("CREATE TABLE harvest_info (key VARCHAR, value VARCHAR)")
        info = {
            **{f"config.{key}": value for key, value in config.items()},
            "top_k_merged": k,
            "d_sae": d_sae,
            "n_prompts": sum(r["end"] - r["start"] for r in records),
            "model_name": records[0].get("model_name"),
            "shards": len(dirs),
        }
        con.executemany(
            "INSERT INTO harvest_info VALUES (?, ?)", [(key, json.dumps(v)) for key, v in info.items()]
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, out_path)
    return out_path
