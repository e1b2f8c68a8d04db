"""Which absolute positions (and which tokens) a forward pass of a model is processing, exact under the KV cache.

Hooks see only activations: `[batch, pos, d]` for a full run, `[batch, 1, d]` for each cached decode step of
`generate`, and never the KV-cache length or the token ids. `SequenceTracker` recovers both, exactly, from what
`r1_plugin.drive` reports for the model's kind (`driver(model).attach_observer(tracker)`):

- HookedTransformer: every embedded id chunk (`on_embed`: `generate` embeds tokens itself and feeds residuals to
  `forward(start_at_layer=0)`), and around each forward its arguments (`begin_forward`: `past_kv_cache` gives the
  cached length, = the absolute position of the first processed position; `attention_mask` each row's left
  padding), from the class-level pass-throughs of `r1_plugin._patches.tl_generation`;
- TransformerBridge: around each forward of the wrapped HF model its arguments (`begin_hf_forward`: input ids,
  the attention mask over cache + new positions, `cache_position`, the transformers cache), from torch hooks;
- both: `begin_generation` / `end_generation` around each `generate` / `generate_stream` call.

A forward whose tokens extend the previous forward's continues the same *sequence* (`seq_id` unchanged, gates
keep their state): a cached decode step, an uncached `generate` step (new ids embedded since the previous
forward), or, inside a generation call, an uncached step that re-runs the whole sequence (its ids start with the
previous forward's). Anything else starts a new one. One tracker per model is shared by all active `steer`
blocks (reference-counted) and removed when the last block exits.
"""

from __future__ import annotations

from typing import Any

import torch

from r1_plugin.drive import driver

_ATTR = "_r1_sequence_tracker"  # the model's tracker while a steer block is active (in model.__dict__)


class SequenceView:
    """What the current forward pass processes, in absolute positions of the whole (padded) sequence.

    offset: absolute position of the forward's first position (the KV-cache length; 0 without a cache).
    n: number of positions this forward processes (1 for a cached decode step).
    tokens: `[batch, offset + n]` ids of the whole sequence so far (pads included), or None when the forward got
        embeddings whose ids were never seen (then only position gates work). Built lazily from the per-step
        chunks, so position-only steering never concatenates ids.
    pads: `[batch]` number of left-padding positions per row; a row's real position = absolute - pads.
    prompt_length: absolute length of the sequence's first forward (the prompt, under `generate`).
    seq_id: changes whenever a new sequence starts (gates reset then).
    forward_id: changes on every forward pass (per-forward caches key on it).
    """

    __slots__ = ("offset", "n", "pads", "prompt_length", "seq_id", "forward_id", "_chunks", "_tokens")

    def __init__(
        self,
        offset: int,
        n: int,
        tokens: torch.Tensor | list[torch.Tensor] | None,
        pads: torch.Tensor,
        prompt_length: int,
        seq_id: int,
        forward_id: int,
    ) -> None:
        self.offset, self.n, self.pads = offset, n, pads
        self.prompt_length, self.seq_id, self.forward_id = prompt_length, seq_id, forward_id
        self._chunks: list[torch.Tensor] | None = [tokens] if isinstance(tokens, torch.Tensor) else tokens
        self._tokens: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        """Batch size."""
        return int(self.pads.shape[0])

    @property
    def length(self) -> int:
        """Absolute length of the sequence up to and including this forward's last position."""
        return self.offset + self.n

    @property
    def tokens(self) -> torch.Tensor | None:
        """`[batch, length]` ids of the sequence so far (None if unknown)."""
        if self._tokens is None and self._chunks is not None:
            chunks = self._chunks
            self._tokens = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)
            self._chunks = [self._tokens]
        return self._tokens

    def tokens_since(self, start: int) -> torch.Tensor | None:
        """`[batch, length - start]` ids of absolute positions start.. (cheap when only the last chunk is new)."""
        if self._chunks is None:
            return None
        last = self._chunks[-1]
        if self.length - last.shape[1] <= start:
            return last[:, start - (self.length - last.shape[1]) :]
        tokens = self.tokens
        assert tokens is not None
        return tokens[:, start:]

    def real_positions(self) -> torch.Tensor:
        """`[batch, n]` real (padding-free) positions of the processed slots; negative on padding."""
        absolute = torch.arange(self.offset, self.length, device=self.pads.device)
        return absolute.unsqueeze(0) - self.pads.unsqueeze(1)


def _leading_zeros(mask: torch.Tensor) -> torch.Tensor:
    """Number of leading zeros per row of a `[batch, pos]` attention mask (= left padding)."""
    return (mask.cumsum(-1) == 0).sum(-1)


class SequenceTracker:
    """Tracks absolute positions, token ids and padding of the sequences a model processes (see module doc)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.users = 0
        self.forward_id = 0
        self.seq_id = 0
        self._pending: list[torch.Tensor] = []  # ids embedded since the last forward started consuming them
        self._in_forward = 0
        self._entry: dict[str, Any] | None = None  # what the current forward's wrapper saw
        self._view: SequenceView | None = None  # resolved view of the current forward
        self._prev: SequenceView | None = None  # view of the previous forward (for continuations)
        self._detach: Any = None
        self._generating = 0  # depth of generate / generate_stream calls in progress

    # -- install / remove ------------------------------------------------------------------------------------
    @classmethod
    def acquire(cls, model: Any) -> SequenceTracker:
        """The model's tracker (installed on first use), with one more user."""
        tracker = model.__dict__.get(_ATTR)
        if tracker is None:
            tracker = cls(model)
            tracker._install()
        tracker.users += 1
        return tracker

    def release(self) -> None:
        """Drop one user; the last one removes the embed hook and detaches the tracker from the model."""
        self.users -= 1
        if self.users <= 0:
            self._uninstall()

    def _install(self) -> None:
        self._detach = driver(self.model).attach_observer(self)
        self.model.__dict__[_ATTR] = self

    def _uninstall(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self.model.__dict__.get(_ATTR) is self:
            del self.model.__dict__[_ATTR]

    # -- observer protocol (called through r1_plugin.drive) -------------------------------------------------
    def begin_generation(self) -> None:
        """A `generate` / `generate_stream` call starts: its first forward begins a new sequence."""
        if not self._in_forward:
            self._pending = []
            self._prev = None
        self._generating += 1

    def end_generation(self) -> None:
        """A generation call ends: the next forward begins a new sequence."""
        self._generating = max(0, self._generating - 1)
        if not self._in_forward:
            self._pending = []
            self._prev = None

    # -- events ----------------------------------------------------------------------------------------------
    def on_embed(self, tokens: Any) -> None:
        """Token ids `[batch, n]` were embedded (HookedTransformer): the ids of the next forward's positions."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and not tokens.is_floating_point():
            self._pending.append(tokens.detach())
            if len(self._pending) > 64:  # stale ids nobody consumed (e.g. embed called by hand)
                self._pending = self._pending[-64:]

    def begin_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A forward call starts: note its KV-cache offset, attention mask and whether it embeds token ids."""
        self._in_forward += 1
        if self._in_forward > 1:
            return  # a nested forward (e.g. called from a hook) keeps the outer view
        self.forward_id += 1
        inp = args[0] if args else kwargs.get("input")
        tokens_input = kwargs.get("start_at_layer") is None
        if tokens_input:
            self._pending = []  # this forward embeds its own ids; older pending ids are stale
        cache = kwargs.get("past_kv_cache")
        offset = 0
        if cache is not None:
            # Read the cached length now: the blocks extend the cache as they run, before later hooks fire.
            if isinstance(inp, torch.Tensor):
                batch = int(inp.shape[0]) if inp.dim() > 1 else 1
            else:
                batch = len(inp) if isinstance(inp, (list, tuple)) else 1
            offset = int(self.model.get_pos_offset(cache, batch))
        self._entry = dict(
            offset=offset,
            input=inp,
            tokens_input=tokens_input,
            cache=kwargs.get("past_kv_cache"),
            attention_mask=kwargs.get("attention_mask"),
            prepend_bos=kwargs.get("prepend_bos"),
            generating=self._generating > 0,
            pads_from_tokens=True,
        )
        self._view = None

    def begin_hf_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A forward of a bridge's HF model starts: its ids, the cached length and the mask over cache + new."""
        self._in_forward += 1
        if self._in_forward > 1:
            return
        self.forward_id += 1
        ids = args[0] if args else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        self._pending = []
        n = None
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and not ids.is_floating_point():
            self._pending.append(ids.detach())
            n = int(ids.shape[1])
        else:
            embeds = kwargs.get("inputs_embeds")
            n = int(embeds.shape[1]) if isinstance(embeds, torch.Tensor) and embeds.dim() == 3 else None
        position = kwargs.get("cache_position")
        cache = kwargs.get("past_key_values")
        if isinstance(position, torch.Tensor) and position.numel():
            offset = int(position.reshape(-1)[0])
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2 and n is not None and mask.shape[1] > n:
            offset = int(mask.shape[1]) - n  # the bridge passes the mask over cached + new positions
        elif cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        else:
            offset = 0
        self._entry = dict(
            offset=offset,
            input=ids,
            tokens_input=True,
            cache=cache,
            attention_mask=mask,
            prepend_bos=None,
            generating=self._generating > 0,
            pads_from_tokens=False,  # without a mask the HF model attended to every position: no padding
        )
        self._view = None

    def end_forward(self) -> None:
        """A forward call ends: its view becomes the previous one (for continuations)."""
        self._in_forward -= 1
        if self._in_forward == 0:
            if self._view is not None:
                self._prev = self._view
            self._view = None
            self._entry = None

    # -- resolution ------------------------------------------------------------------------------------------
    def view(self, activation: torch.Tensor) -> SequenceView:
        """The view of the forward pass that produced `activation` (`[batch, n, ...]`), resolved once per pass."""
        if self._view is not None and self._view.forward_id == self.forward_id and self._in_forward:
            return self._view
        batch, n = int(activation.shape[0]), int(activation.shape[1])
        if not self._in_forward or self._entry is None:
            # A hook fired outside model.forward (a block called by hand): a fresh, unpadded sequence.
            self.seq_id += 1
            self.forward_id += 1
            pads = torch.zeros(batch, dtype=torch.long, device=activation.device)
            return SequenceView(0, n, None, pads, n, self.seq_id, self.forward_id)
        self._view = self._resolve(batch, n, activation.device)
        return self._view

    def _resolve(self, batch: int, n: int, device: torch.device) -> SequenceView:
        entry = self._entry
        assert entry is not None
        offset = int(entry["offset"])
        length = offset + n
        prev = self._prev if (self._prev is not None and self._prev.batch == batch) else None

        # The ids of this forward's positions: the trailing pending embeds of this batch size.
        recent: list[torch.Tensor] = []
        have = 0
        for ids in reversed(self._pending):
            if ids.shape[0] != batch or have >= length:
                break
            recent.insert(0, ids)
            have += int(ids.shape[1])
        self._pending = []
        new_ids = (recent[0] if len(recent) == 1 else torch.cat(recent, dim=1)).to(device) if recent else None

        tokens: list[torch.Tensor] | None = None
        continues = False
        if (
            prev is not None
            and have > 0
            and have + prev.length == length
            and offset in (0, prev.length)
        ):
            # A cached decode step (offset = previous length) or an uncached re-run of the whole sequence
            # (offset 0) whose new ids were embedded since the previous forward: the same sequence goes on.
            continues = True
            if prev._chunks is not None and new_ids is not None:
                tokens = [*prev._chunks, new_ids]
                if len(tokens) > 256:  # keep the chunk list short on long generations
                    tokens = [torch.cat(tokens, dim=1)]
        elif prev is not None and have == 0 and offset > 0 and offset == prev.length:
            continues = True  # a cached step fed embeddings whose ids were never seen
        elif (
            entry["generating"]
            and prev is not None
            and new_ids is not None
            and offset == 0
            and have >= length > prev.length
            and prev.tokens is not None
            and torch.equal(new_ids[:, -length:][:, : prev.length], prev.tokens)
        ):
            # An uncached `generate_stream` step: the whole sequence is re-embedded from its ids, and they
            # extend the previous forward's. The same sequence goes on; only the new ids are scanned by gates.
            continues = True
            tokens = [new_ids[:, -length:]]
        elif new_ids is not None and have >= length:
            tokens = [new_ids[:, -length:]]  # a fresh sequence: all its ids were just embedded

        mask = entry["attention_mask"]
        if continues and prev is not None:
            pads = prev.pads  # left padding is fixed when the sequence starts
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == batch:
            pads = _leading_zeros(mask.to(device)).long()
        elif tokens is not None and entry["tokens_input"] and entry["pads_from_tokens"] and self._left_padding():
            pads = self._pads_from_tokens(tokens[0], entry["prepend_bos"])
        else:
            pads = torch.zeros(batch, dtype=torch.long, device=device)

        if continues and prev is not None:
            return SequenceView(offset, n, tokens, pads, prev.prompt_length, prev.seq_id, self.forward_id)
        self.seq_id += 1
        return SequenceView(offset, n, tokens, pads, length, self.seq_id, self.forward_id)

    def _left_padding(self) -> bool:
        tokenizer = getattr(self.model, "tokenizer", None)
        return tokenizer is not None and getattr(tokenizer, "padding_side", None) == "left"

    def _pads_from_tokens(self, tokens: torch.Tensor, prepend_bos: Any) -> torch.Tensor:
        """Left padding as TransformerLens's `input_to_embed` computes it for a left-padding tokenizer."""
        from transformer_lens.utilities.tokenize_utils import get_attention_mask

        if not isinstance(prepend_bos, bool):
            prepend_bos = bool(self.model.cfg.default_prepend_bos)
        mask = get_attention_mask(self.model.tokenizer, tokens, prepend_bos)
        return _leading_zeros(mask).long()
