"""Build a feature database in Goodfire's schema by running a model + SAE over prompts.

`harvest` runs a HookedTransformer or a TransformerBridge over a block of prompts in batches, encodes the hook's
activations with the SAE and keeps, per feature, the top-k activations seen so far (a running `torch.topk` merge
over all features at once). It writes Parquet shards into one directory per shard, checkpointing as it goes, so
an interrupted run resumes where it stopped and several machines can each harvest one shard (`shard_index`,
`num_shards`) of the same prompt list. `merge_shards` lets DuckDB merge the shards into one `.ddb` with the `tokens`,
`activations` and `autointerp` tables that `FeatureDB` reads.

Every call into the model goes through `r1_plugin.drive.driver(model)` (tokenising, resolving the hook, running
to it, device and name), so a HookedTransformer and a TransformerBridge harvest alike: each batch runs in query
chunks over the model's KV cache (memory linear in prompt length). A full disk is a `NoSpaceLeftError` that
leaves no temporary file and keeps the last checkpoint.

Shard directory layout (`<out_dir>/shard-<i>-of-<n>/`):

    progress.json             fingerprint, prompt range, prompts done, complete flag
    state.pt                  running top-k (values, sequence ids, token indices), [d_sae, top_k] each
    tokens-<first_seq>.parquet  tokens of the prompts done, one file per checkpoint
    activations.parquet       the final top-k rows (written when the shard is complete)
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import torch

from r1_plugin.drive import driver
from r1_plugin.features.db import FeatureDB, FeatureDBError, FeatureLabel
from r1_plugin.hook_names import sae_hook_name_or_none
from r1_plugin.saes.sae_devices import encode_on_sae

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


DEFAULT_CHUNK_SIZE = 512  # query positions per forward chunk (as sink detection): memory linear in prompt length


# -------------------------------------------------------------------------------------------- full disks
class NoSpaceLeftError(FeatureDBError, OSError):
    """The disk filled up while harvest or merge wrote: nothing partial is left, what was complete is intact."""


def _is_no_space(exc: BaseException) -> bool:
    """An OSError ENOSPC, or a library's wrapped 'No space left on device' (DuckDB's IOException)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)


def _remove(paths: Iterable[Path]) -> None:
    """Delete files and folders left by a failed write (each may or may not exist)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():  # (unlinking a missing file on a read-only disk is EROFS)
            path.unlink()


@contextmanager
def _writing(where: Path, leftovers: Callable[[], Iterable[Path]], kept: str) -> Iterator[None]:
    """Around a write into `where`: on any failure delete `leftovers()` (temporary files); a full disk becomes a
    NoSpaceLeftError that names `where`, says what to do, and what is `kept`."""
    try:
        yield
    except BaseException as exc:
        _remove(leftovers())
        if isinstance(exc, Exception) and _is_no_space(exc):
            free = shutil.disk_usage(where).free / 2**20 if where.exists() else float("nan")
            raise NoSpaceLeftError(
                f"no space left on {where} ({free:.1f} MiB free): free some space there (or choose another output "
                f"folder) and rerun the same command; {kept}"
            ) from None
        raise


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



@dataclass(frozen=True)
class _Shard:
    """Which prompts one shard harvests, where it writes, and the fingerprint a resume must match."""

    dir: Path
    index: int
    count: int
    start: int
    end: int
    n_total: int
    fingerprint: str


class _Harvester:
    """One shard's harvest: tokenising, the forward pass, the running top-k and the checkpoint files."""

    def __init__(self, model: Any, sae: Any, config: HarvestConfig, shard: _Shard, chunk_size: int | None) -> None:
        self.model, self.sae, self.config, self.shard, self.chunk_size = model, sae, config, shard, chunk_size
        self.shard_dir = shard.dir
        self.driver = driver(model)
        self.tokenizer = self.driver.tokenizer
        self.hook = self.driver.input_hook_name(config.hook_name)
        self.decoded: dict[int, str] = {}
        self.saved = 0  # prompts held by the last checkpoint written (what a failed write leaves intact)
        self.topk = RunningTopK(config.top_k, config.min_strength)
        self._con = duckdb.connect(":memory:")

    # ---------------------------------------------------------------- tokens
    def tokenize(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt, truncated to max_length (strings via the model's tokenizer)."""
        if isinstance(prompt, str):
            ids = self.driver.text_tokens(prompt, self.config.prepend_bos)[0].tolist()
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
        device = self.driver.device
        x = self.driver.hook_activations(tokens.to(device), valid.long().to(device), self.hook, self.chunk_size)
        kept = kept_token_mask(self.tokenizer, tokens, valid, self.config.exclude_special)
        x = x[kept.to(x.device)]  # [n_kept, d_in], padding (and special tokens) dropped
        acts = encode_on_sae(self.sae, x, out_dtype=torch.float32)  # on the SAE's device/dtype, back beside x
        return acts, kept

    def harvest_batch(self, b0: int, prompts: Sequence[Prompt]) -> Any:
        """Run prompts b0, b0+1, ... into the running top-k; their rows of the tokens table (a DataFrame)."""
        import pandas as pd

        ids = [self.tokenize(p) for p in prompts]
        acts, kept = self.sae_acts(ids)
        rows, cols = kept.nonzero(as_tuple=True)
        self.topk.update(acts, rows + b0, cols)
        flat_ids = torch.tensor([t for seq in ids for t in seq])
        return pd.DataFrame(
            {  # every token goes in the tokens table, special or not
                "sequence_id": torch.cat([torch.full((len(s),), b0 + i) for i, s in enumerate(ids)]).numpy().astype("int64"),
                "token_idx": torch.cat([torch.arange(len(s)) for s in ids]).numpy().astype("int32"),
                "token": flat_ids.numpy().astype("int32"),
                "decoded_token": self.decode(flat_ids),
            }
        )

    # ---------------------------------------------------------------- files
    def progress(self, n_done: int, complete: bool) -> dict[str, Any]:
        """The progress.json record after `n_done` prompts of this shard."""
        s = self.shard
        return {
            "fingerprint": s.fingerprint,
            "config": asdict(self.config),
            "n_prompts_total": s.n_total,
            "start": s.start,
            "end": s.end,
            "done": n_done,
            "complete": complete,
            "d_sae": None if self.topk.values is None else int(self.topk.values.shape[0]),
            "model_name": self.driver.model_name,
            "shard_index": s.index,
            "num_shards": s.count,
        }

    def resume(self) -> int | None:
        """Prompts already done by an earlier run of this shard (0 for a new one), or None if it is complete;
        removes what a crash left after the last recorded checkpoint."""
        done, path = 0, self.shard_dir / PROGRESS_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") != self.shard.fingerprint:
                raise FeatureDBError(
                    f"{self.shard_dir} holds a harvest of other prompts or settings ({saved.get('config')}); "
                    "use a new out_dir, or delete that shard directory to start over"
                )
            done = int(saved["done"])
            if saved.get("complete"):
                return None
            if done and (self.shard_dir / STATE_FILE).is_file():
                state_done = self.load_state()
                if state_done is not None and state_done > done:
                    done = state_done  # crashed after writing state.pt (and its tokens file), before progress.json
            else:
                done = 0
        for leftover in self.shard_dir.glob("tokens-*.parquet"):  # written after the last recorded checkpoint
            if int(leftover.stem.split("-")[1]) >= self.shard.start + done:
                leftover.unlink()
        _remove(self.shard_dir.glob("*.tmp"))
        self.saved = done
        return done

    def load_state(self) -> int | None:
        """Restore the running top-k from the last checkpoint (weights_only: plain tensors); returns the number
        of prompts it holds (None for a state written without that count)."""
        state = torch.load(self.shard_dir / STATE_FILE, map_location="cpu", weights_only=True)
        self.topk.load_state_dict(state)
        return int(state["done"]) if "done" in state else None

    def _writing(self, what: str) -> Any:
        """The full-disk guard for one checkpoint write: temporary files go, the last checkpoint stays."""
        kept = (
            f"the checkpoint at {self.saved} of {self.shard.end - self.shard.start} prompts is intact and the rerun "
            f"resumes from it (while writing {what})"
        )
        return _writing(self.shard_dir, lambda: list(self.shard_dir.glob("*.tmp")), kept)

    def save_checkpoint(self, token_rows: list[Any], first_seq: int, progress: dict[str, Any]) -> None:
        """Write the new tokens, then the top-k state, then progress.json (last, so a crash leaves the old one)."""
        import pandas as pd

        with self._writing("a checkpoint"):
            if token_rows:
                frame = pd.concat(token_rows, ignore_index=True)  # noqa: F841 (read by DuckDB by name)
                target = self.shard_dir / f"tokens-{first_seq:012d}.parquet"
                tmp = target.with_name(target.name + ".tmp")
                self._con.execute("COPY (SELECT * FROM frame) TO ? (FORMAT parquet)", [str(tmp)])
                os.replace(tmp, target)
            if self.topk.values is not None:
                # The prompt count goes with the state: a crash between this write and progress.json's leaves the
                # state ahead of progress.json, and the resume must continue from the state. Serialised in memory
                # first: torch.save onto a full disk fails with a cryptic "unexpected pos", a plain write with ENOSPC.
                buffer = io.BytesIO()
                torch.save({**self.topk.state_dict(), "done": torch.tensor(int(progress["done"]))}, buffer)
                _atomic_write_bytes(self.shard_dir / STATE_FILE, buffer.getvalue())
            _atomic_write_bytes(self.shard_dir / PROGRESS_FILE, json.dumps(progress, indent=1).encode())
        self.saved = int(progress["done"])

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
        with self._writing(ACTIVATIONS_FILE):
            self._con.register("acts_frame", frame)
            self._con.execute(
                "COPY (SELECT feature_id::INTEGER AS feature_id, sequence_id::BIGINT AS sequence_id, "
                "token_idx::INTEGER AS token_idx, strength::FLOAT AS strength FROM acts_frame) TO ? (FORMAT parquet)",
                [str(tmp)],
            )
            self._con.unregister("acts_frame")
            os.replace(tmp, self.shard_dir / ACTIVATIONS_FILE)
        return len(frame)

    def run(self, prompts: Sequence[Prompt], done: int, batch_size: int, checkpoint_every: int, progress: bool,
            tracker: Any | None, on_batch: Callable[[int], None] | None) -> HarvestResult:
        """Harvest prompts [start + done, end) in batches, checkpointing every `checkpoint_every` batches."""
        from tqdm.auto import tqdm

        start, end = self.shard.start, self.shard.end
        t0, n_tokens, batches_since = time.perf_counter(), 0, 0
        pending: list[Any] = []
        pending_first = start + done
        bar = tqdm(total=end - start, initial=done, unit="prompt", desc=f"harvest {self.shard_dir.name}",
                   disable=not progress)
        try:
            for b0 in range(start + done, end, batch_size):
                frame = self.harvest_batch(b0, prompts[b0 : min(b0 + batch_size, end)])
                pending.append(frame)
                n_tokens += len(frame)
                done, batches_since = min(b0 + batch_size, end) - start, batches_since + 1
                bar.update(min(b0 + batch_size, end) - b0)
                elapsed = time.perf_counter() - t0
                bar.set_postfix(tok_s=f"{n_tokens / elapsed:.0f}" if elapsed > 0 else "-")
                if on_batch is not None:
                    on_batch(done)
                if batches_since >= checkpoint_every and start + done < end:
                    self.save_checkpoint(pending, pending_first, self.progress(done, False))
                    pending, pending_first, batches_since = [], start + done, 0
                    if tracker is not None:
                        tracker.log_metrics({"harvest/prompts_done": done, "harvest/tokens_per_s": n_tokens / elapsed})
            self.save_checkpoint(pending, pending_first, self.progress(done, False))
            n_rows = self.write_activations()
            self.save_checkpoint([], pending_first, self.progress(done, True))
        finally:
            bar.close()
        result = HarvestResult(self.shard_dir, end - start, n_tokens, time.perf_counter() - t0, True,
                               {"activation_rows": n_rows})
        if tracker is not None:
            tracker.log_metrics({"harvest/prompts_done": done, "harvest/tokens_per_s": result.tokens_per_s})
        return result


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
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
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

    `chunk_size`: query positions per forward chunk over the KV cache (None: one forward per batch), so memory
    grows linearly with prompt length; it does not change what is harvested. A full disk raises
    `NoSpaceLeftError`, leaving no temporary file and the last checkpoint intact.
    """
    hook_name = hook_name or sae_hook_name_or_none(sae)
    if not hook_name:
        raise ValueError("hook_name is needed: the SAE's config does not name the hook it reads")
    if top_k < 1 or batch_size < 1 or max_length < 1 or checkpoint_every < 1:
        raise ValueError("top_k, batch_size, max_length and checkpoint_every must all be >= 1")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    if not math.isfinite(min_strength):
        raise ValueError(f"min_strength must be a finite number, got {min_strength}")
    config = HarvestConfig(hook_name, top_k, max_length, prepend_bos, float(min_strength), bool(exclude_special))
    driver(model).hook_name(hook_name)  # a model or hook harvest cannot run fails before any file is written
    start, end = shard_range(len(prompts), shard_index, num_shards)
    shard_dir = Path(out_dir) / shard_dirname(shard_index, num_shards)
    with _writing(Path(out_dir), list, "nothing was harvested yet"):
        shard_dir.mkdir(parents=True, exist_ok=True)
    shard = _Shard(shard_dir, shard_index, num_shards, start, end, len(prompts),
                   _fingerprint(config, prompts, start, end, len(prompts)))
    worker = _Harvester(model, sae, config, shard, chunk_size)
    done = worker.resume()
    if done is None:
        return HarvestResult(shard_dir, end - start, 0, 0.0, True)
    return worker.run(prompts, done, batch_size, checkpoint_every, progress, tracker, on_batch)


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


def _check_shards(dirs: list[Path]) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """The progress records of complete, mutually consistent shards; their shared config and SAE width."""
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
    return records, records[0]["config"], d_saes.pop() if d_saes else 0


def _write_merged(con: Any, dirs: list[Path], records: list[dict[str, Any]], k: int, d_sae: int,
                  label_rows: list[tuple[Any, ...]]) -> None:
    """Fill the merged DB: tokens, the global top-k activations, one autointerp row per feature, harvest_info."""
    import pandas as pd

    token_files = sorted(str(f) for d in dirs for f in d.glob("tokens-*.parquet"))
    act_files = [str(d / ACTIVATIONS_FILE) for d in dirs]
    con.execute("CREATE TABLE tokens (sequence_id BIGINT, token_idx INTEGER, token INTEGER, decoded_token VARCHAR)")
    if token_files:
        con.execute(
            "INSERT INTO tokens SELECT sequence_id, token_idx, token, decoded_token FROM read_parquet(?) "
            "ORDER BY sequence_id, token_idx",
            [token_files],
        )
    con.execute("CREATE TABLE activations (feature_id INTEGER, sequence_id BIGINT, token_idx INTEGER, strength FLOAT)")
    con.execute(
        "INSERT INTO activations SELECT feature_id, sequence_id, token_idx, strength FROM read_parquet(?) "
        "QUALIFY row_number() OVER (PARTITION BY feature_id ORDER BY strength DESC, sequence_id, token_idx) <= ? "
        "ORDER BY feature_id, strength DESC, sequence_id, token_idx",
        [act_files, k],
    )
    label_frame = pd.DataFrame(  # noqa: F841 (read by DuckDB by name)
        label_rows, columns=["feature_id", "label", "quality", "interestingness", "model_name", "prompt_version"]
    ).astype({"feature_id": "int64", "label": object, "quality": "float64", "interestingness": "float64",
              "model_name": object, "prompt_version": object})
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
        **{f"config.{key}": value for key, value in records[0]["config"].items()},
        "top_k_merged": k,
        "d_sae": d_sae,
        "n_prompts": sum(r["end"] - r["start"] for r in records),
        "model_name": records[0].get("model_name"),
        "shards": len(dirs),
    }
    con.executemany("INSERT INTO harvest_info VALUES (?, ?)", [(key, json.dumps(v)) for key, v in info.items()])
    con.execute("CHECKPOINT")


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
    (a {feature_id: label} mapping or a labels file) or 'unlabelled'. The DB is written beside `out_path` and
    renamed into place when complete; a failure (a full disk: `NoSpaceLeftError`) leaves no temporary file.
    """
    dirs = _shard_dirs(shards)
    records, config, d_sae = _check_shards(dirs)
    k = int(top_k if top_k is not None else config["top_k"])
    if k < 1:
        raise FeatureDBError(f"top_k must be >= 1, got {k}")
    label_rows = _read_labels(labels)
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FeatureDBError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    # DuckDB's own files beside the database: its write-ahead log and its spill folder.
    leftovers = [tmp, tmp.with_name(tmp.name + ".wal"), tmp.with_name(tmp.name + ".tmp")]
    _remove(leftovers)
    kept = f"the shards are untouched{' and ' + str(out_path) + ' is unchanged' if out_path.exists() else ''}"
    with _writing(out_path.parent, lambda: leftovers, kept):
        con = duckdb.connect(str(tmp))
        try:
            _write_merged(con, dirs, records, k, d_sae, label_rows)
        except BaseException:
            _close_quietly(con)
            raise
        con.close()
        os.replace(tmp, out_path)
    return out_path


def _close_quietly(con: Any) -> None:
    """Close a DuckDB connection whose write already failed; closing then fails the same way, and the first
    error is the one to report."""
    try:
        con.close()
    except duckdb.Error:
        pass
