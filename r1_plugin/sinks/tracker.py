"""Sink monitoring during `model.generate` with a KV cache: alpha for every key position, across decode steps.

R1's traces run to thousands of tokens, and re-running the final sequence to find its sinks would cost a full
quadratic forward. With the KV cache each decode step's `hook_pattern` is [batch, head, 1, keys]: the monitor
adds that row into per-key sums, so after generation it holds exactly what the one-shot detector computes on
the sequence the model ran (float64 sums; the only difference is the forward's own float rounding between a
cached decode step and a full forward).

`SinkMonitor` was called `SinkTracker` (a name it shared with W&B's `Tracker` and steering's `SequenceTracker`);
the old name still imports, with a DeprecationWarning, for one release.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from r1_plugin.sinks._scan import ScanState, SinkDetectionError
from r1_plugin.sinks.detect import (
    MassiveActivationReport,
    SinkReport,
    massive_report_from_state,
    sink_report_from_state,
    str_tokens_of,
)
from r1_plugin.sinks.thresholds import SinkThresholds, resolve_thresholds


class SinkMonitor:
    """Hooks that accumulate attention-sink (and residual) statistics over `model.generate`'s decode steps.

    Use as a context manager around `model.generate(..., use_past_kv_cache=True)`, or call `monitor.generate`.
    `generate` never runs the last token it samples, so the tracked sequence is `output[:, :-1]` (every token
    the model processed); `report()` equals `find_attention_sinks(model, output[:, :-1])`.
    """

    def __init__(
        self,
        model: Any,
        thresholds: SinkThresholds | None = None,
        *,
        track_residual: bool = True,
        **deprecated: Any,
    ) -> None:
        """Prepare (not yet attach) the hooks for `model` with the detector's thresholds (default SinkThresholds();
        the old `epsilon=`, `min_value=`, ... keywords still work for one release, with a DeprecationWarning)."""
        self.model = model
        self.thresholds = resolve_thresholds(thresholds, deprecated, type(self).__name__)
        self.track_residual = track_residual
        self.output: torch.Tensor | None = None
        self._ctx: Any = None
        self.state = self._new_state()

    def _new_state(self) -> ScanState:
        """Empty accumulators."""
        return ScanState(
            self.model, track_alpha=True, track_residual=self.track_residual, min_value=self.thresholds.min_value
        )

    def reset(self) -> None:
        """Forget everything tracked (e.g. before another generate call); not while attached."""
        if self._ctx is not None:
            raise SinkDetectionError("reset() while the hooks are attached: leave the `with` block first")
        self.state = self._new_state()
        self.output = None

    @property
    def n_positions(self) -> int:
        """Number of positions the model has processed so far (prompt + decoded tokens fed back in)."""
        return self.state.length

    def __enter__(self) -> SinkMonitor:
        """Attach the hooks to the model."""
        if self._ctx is not None:
            raise SinkDetectionError(f"this {type(self).__name__} is already attached")
        self._ctx = self.model.hooks(fwd_hooks=self.state.fwd_hooks())
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        """Remove the hooks."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(*exc)

    def generate(self, input: Any, max_new_tokens: int = 64, **kwargs: Any) -> Any:
        """`model.generate(input, max_new_tokens, use_past_kv_cache=True, **kwargs)` with the hooks attached."""
        if kwargs.get("use_past_kv_cache") is False:
            raise SinkDetectionError("the monitor needs use_past_kv_cache=True (each position must run once)")
        kwargs["use_past_kv_cache"] = True
        kwargs.setdefault("verbose", False)
        if self.state.length:
            self.reset()
        with self, torch.no_grad():
            out = self.model.generate(input, max_new_tokens=max_new_tokens, **kwargs)
        if isinstance(out, torch.Tensor) and out.dim() == 2:
            self.output = out
        return out

    def tokens(self, output: torch.Tensor | None = None) -> torch.Tensor | None:
        """[batch, n_positions] token ids the model processed, from `output` (or the last `generate` output)."""
        out = output if output is not None else self.output
        if out is None:
            return None
        out = out if out.dim() == 2 else out[None]
        if out.shape[1] < self.n_positions:
            raise SinkDetectionError(f"output has {out.shape[1]} tokens, the monitor saw {self.n_positions}")
        return out[:, : self.n_positions]

    def _str_tokens(self, output: torch.Tensor | None) -> tuple[torch.Tensor | None, list[list[str]] | None]:
        """Processed token ids and their strings (None without output or tokenizer)."""
        toks = self.tokens(output)
        return toks, (None if toks is None else str_tokens_of(self.model, toks))

    def report(self, output: torch.Tensor | None = None, batched: bool | None = None) -> SinkReport:
        """The `SinkReport` over every processed position (batched by default only for batch > 1)."""
        self.state.check_ran()
        toks, strs = self._str_tokens(output)
        assert self.state.batch is not None
        return sink_report_from_state(
            self.state,
            self.thresholds,
            batched=self.state.batch > 1 if batched is None else batched,
            str_tokens=strs,
            tokens=toks,
        )

    def massive_activations(
        self, output: torch.Tensor | None = None, batched: bool | None = None
    ) -> MassiveActivationReport:
        """Massive activations and residual norms over the processed positions (needs track_residual)."""
        if not self.track_residual:
            raise SinkDetectionError(f"this {type(self).__name__} was made with track_residual=False")
        self.state.check_ran()
        _, strs = self._str_tokens(output)
        assert self.state.batch is not None
        return massive_report_from_state(
            self.state,
            self.thresholds,
            batched=self.state.batch > 1 if batched is None else batched,
            str_tokens=strs,
        )


def __getattr__(name: str) -> Any:
    """`SinkTracker`, the old name of SinkMonitor, with a DeprecationWarning (it goes in the next release)."""
    if name == "SinkTracker":
        warnings.warn(
            "r1_plugin.sinks.SinkTracker is now SinkMonitor (the old name goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        return SinkMonitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
