"""`steer`: add a direction (or clamp/ablate an SAE feature) at a hook, only where a gate is open.

    with steer(model, hook_name="blocks.37.hook_resid_post", direction=vec, strength=8.0,
               gate=AfterResponsePrefix()) as result:
        out = model.generate(tokens, max_new_tokens=256, use_past_kv_cache=True)
    result.open_at  # per row: the real position where steering began (None: never)
    result.close_at  # per row: where a closing gate stopped it (None: it did not close)

Works for `generate` (cached and uncached), `model(...)`, `run_with_cache` and `run_with_hooks`: the hook is a
permanent TransformerLens hook (so `run_with_hooks`' clean-up keeps it) and positions come from the shared
`SequenceTracker`. Leaving the block (normally or by an exception) removes exactly what it added.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from r1_plugin.drive import driver
from r1_plugin.steering.gates import Gate, GateRunner, as_gate
from r1_plugin.steering.interventions import AddDirection, Intervention
from r1_plugin.steering.spec import SteeringSpec, SteeringSpecError, check_strength, keywords_given
from r1_plugin.steering.tracker import SequenceTracker, SequenceView


class GateNeverOpenedWarning(UserWarning):
    """A steer block's gate never opened on some row: nothing was steered there."""


@dataclass
class GateRecord:
    """Where the gate opened and closed in one sequence (one `generate` call or one forward), per batch row.

    open_at: real position (left padding not counted) of the first steered position, None if never steered.
    close_at: real position of the first position after it that was not steered (where a closing gate closed),
        None if steering went on to the end of the row (or never began). Steered: `open_at <= p < close_at`.
    open_at_absolute / close_at_absolute: the same as indices into the padded token tensor (`+ pads`), or None.
    length: real length of each row seen; pads: left padding per row; prompt_length: real prompt length.
    tokens: `[batch, seq]` ids of the sequence as the gate saw it (None when fed embeddings).
    """

    open_at: list[int | None]
    close_at: list[int | None]
    open_at_absolute: list[int | None]
    close_at_absolute: list[int | None]
    length: list[int]
    pads: list[int]
    prompt_length: list[int]
    tokens: torch.Tensor | None = None

    @property
    def never_opened(self) -> list[int]:
        """Rows where nothing was steered."""
        return [row for row, pos in enumerate(self.open_at) if pos is None]

    @property
    def n_steered(self) -> list[int]:
        """Number of steered positions per row."""
        return [
            0 if p is None else (n if c is None else c) - p for p, c, n in zip(self.open_at, self.close_at, self.length)
        ]


@dataclass
class SteeringResult:
    """What one `steer` block did: its gate records (one per sequence processed), in order."""

    hook_name: str
    gate: Gate
    records: list[GateRecord] = field(default_factory=list)

    @property
    def last(self) -> GateRecord:
        """The record of the most recent sequence."""
        if not self.records:
            raise ValueError("the steer block has not run the model yet: no gate record")
        return self.records[-1]

    @property
    def open_at(self) -> list[int | None]:
        """Per row of the most recent sequence: real position where steering began, or None."""
        return self.last.open_at

    @property
    def close_at(self) -> list[int | None]:
        """Per row of the most recent sequence: real position where a closing gate stopped steering, or None."""
        return self.last.close_at

    @property
    def opened(self) -> bool:
        """Whether the gate opened on every row of every sequence."""
        return bool(self.records) and all(not r.never_opened for r in self.records)

    def summary(self) -> str:
        """One line per sequence: where the gate opened on each row."""
        lines = []
        for i, rec in enumerate(self.records):
            where = ", ".join(
                f"row {r}: "
                + ("never" if p is None else f"pos {p}{'' if c is None else f'-{c}'} (abs {a}, {s} steered)")
                for r, (p, c, a, s) in enumerate(zip(rec.open_at, rec.close_at, rec.open_at_absolute, rec.n_steered))
            )
            lines.append(f"[{i}] {self.gate!r} at {self.hook_name}: {where}")
        return "\n".join(lines)


def _as_direction(direction: Any, normalize: bool, relative: bool) -> torch.Tensor:
    vec = torch.as_tensor(direction).detach()
    if not vec.is_floating_point():
        vec = vec.float()
    if normalize or relative:
        norm = vec.norm()
        if norm == 0:
            raise ValueError("the steering direction is all zeros: nothing to normalise")
        vec = vec / norm
    return vec


class _SteerHook:
    """The TransformerLens hook of one steer block: gate mask per forward, then the intervention."""

    def __init__(
        self,
        tracker: SequenceTracker,
        runner: GateRunner,
        intervention: Intervention,
        result: SteeringResult,
    ) -> None:
        self.tracker = tracker
        self.runner = runner
        self.intervention = intervention
        self.result = result
        self._forward_id = -1
        self._mask: torch.Tensor | None = None
        self._record_view: SequenceView | None = None
        self._record_span: tuple[torch.Tensor, torch.Tensor] | None = None
        self._absolute: tuple[torch.Tensor, torch.Tensor] | None = None
        self._absolute_seq = -1

    def mask(self, act: torch.Tensor) -> torch.Tensor:
        """`[batch, n]` bool: which processed positions the gate opens (once per forward).

        The hot path of a cached decode step is two comparisons: the per-row thresholds are kept in absolute
        positions (`open_from + pads`, `close_from + pads`, recomputed only when the gate's thresholds change)
        and compared with the step's scalar offset.
        """
        view = self.tracker.view(act)
        if view.forward_id == self._forward_id and self._mask is not None and self._mask.shape[1] == act.shape[1]:
            return self._mask
        if self._record_view is not None and view.seq_id != self._record_view.seq_id:
            self.flush()
        span = self.runner.span(view)
        old = self._record_span
        if old is None or self._absolute is None or view.seq_id != self._absolute_seq or any(
            a is not b for a, b in zip(span, old)
        ):
            # Gates never open before real position 0, so padding (absolute < pads) is never steered.
            self._absolute = (span[0].clamp(min=0) + view.pads, span[1].clamp(min=0) + view.pads)
            self._absolute_seq = view.seq_id
        start, stop = self._absolute
        if view.n == 1:
            self._mask = (start.le(view.offset) & stop.gt(view.offset)).unsqueeze(1)
        else:
            absolute = torch.arange(view.offset, view.length, device=view.pads.device).unsqueeze(0)
            self._mask = (absolute >= start.unsqueeze(1)) & (absolute < stop.unsqueeze(1))
        self._forward_id = view.forward_id
        self._record_view, self._record_span = view, span
        return self._mask

    def __call__(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        return self.intervention.apply(act, self.mask(act))

    def flush(self) -> None:
        """Turn the current sequence's state into a GateRecord (done lazily: it needs a device sync)."""
        view, span = self._record_view, self._record_span
        if view is None or span is None:
            return
        pads = view.pads.tolist()
        length = [view.length - p for p in pads]
        prompt = [view.prompt_length - p for p in pads]
        opens, closes = span[0].tolist(), span[1].tolist()
        open_at = [o if o < min(c, n) else None for o, c, n in zip(opens, closes, length)]
        close_at = [None if o is None or c >= n else c for o, c, n in zip(open_at, closes, length)]
        self.result.records.append(
            GateRecord(
                open_at=open_at,
                close_at=close_at,
                open_at_absolute=[None if o is None else o + p for o, p in zip(open_at, pads)],
                close_at_absolute=[None if c is None else c + p for c, p in zip(close_at, pads)],
                length=length,
                pads=pads,
                prompt_length=prompt,
                tokens=view.tokens.detach().cpu() if view.tokens is not None else None,
            )
        )
        self._record_view = self._record_span = None


def resolve_hook_name(model: Any, hook_name: str) -> str:
    """`hook_name` as `model` has it (see `r1_plugin.drive.Driver.hook_name`): TransformerLens and bridge names
    both resolve, and where SAELens has spliced an SAE in, to `<hook_name>.hook_sae_output` (what flows on)."""
    return driver(model).hook_name(hook_name)


def _remove_hook(model: Any, hook_name: str, fn: Any) -> None:
    hook_point = model.hook_dict[hook_name]
    for handle in list(hook_point.fwd_hooks):
        if handle.user_hook is fn:
            handle.hook.remove()
            hook_point.fwd_hooks.remove(handle)


@contextmanager
def steer(
    model: Any,
    hook_name: str | None = None,
    direction: Any = None,
    strength: float | Sequence[float] | torch.Tensor = 1.0,
    gate: Gate | str | int | None = None,
    *,
    normalize: bool = False,
    relative: bool = False,
    sae: Any = None,
    feature: int | Sequence[int] | None = None,
    mode: str = "add",
    intervention: Intervention | None = None,
    warn_never_opened: bool = True,
    spec: SteeringSpec | None = None,
) -> Iterator[SteeringResult]:
    """Steer `model` at `hook_name` wherever `gate` is open, for the duration of the `with` block.

    direction: a vector of the hook's trailing shape (d_model for the residual stream); `strength * direction`
        is added as given, or as a unit vector with `normalize=True`. `strength` may be one number or one per
        batch row (used by sweeps to run several strengths in one batch).
    relative: strength is a fraction of each position's activation norm (`strength * |x| * unit(direction)`),
        so the same number means the same push at every layer.
    sae, feature: steer by SAE feature(s) instead of a direction. `mode="add"` adds `strength` x the decoder
        row(s) (the Neuronpedia convention); `mode="clamp"` sets the feature activation(s) to `strength` through
        the SAE with its error term; `mode="ablate"` sets them to 0. `hook_name` defaults to the SAE's hook.
    gate: where to steer (default `AfterResponsePrefix()`); see `r1_plugin.steering.gates`.
    intervention: a custom `Intervention` (then direction/sae are not used).
    spec: a `SteeringSpec` holding sae/feature/direction/hook_name/mode/normalize/relative in one (then those
        keywords must be left out).

    Yields a `SteeringResult`. On exit rows whose gate never opened are reported with a
    `GateNeverOpenedWarning` (unless `warn_never_opened=False`) and are listed in the result.
    """
    from r1_plugin.steering import sae_directions

    drv = driver(model)  # a clear error for a model r1_plugin cannot drive, before anything else
    gate_obj = as_gate(gate)
    if spec is not None:
        if keywords_given(hook_name=hook_name, direction=direction, sae=sae, feature=feature, mode=mode,
                          normalize=normalize, relative=relative):
            raise SteeringSpecError("give the steering as `spec` or as keywords (sae, feature, direction, "
                                    "hook_name, mode, normalize, relative), not both")
        sae, feature, direction, hook_name = spec.sae, spec.feature, spec.direction, spec.hook_name
        mode, normalize, relative = spec.mode, spec.normalize, spec.relative
    if intervention is None:
        check_strength(strength)
        spec = spec or SteeringSpec(sae=sae, feature=feature, direction=direction, hook_name=hook_name, mode=mode,
                                    normalize=normalize, relative=relative)  # validated once, here
    if sae is not None:
        hook_name = hook_name or sae_directions.sae_hook_name(sae)
    if hook_name is None:
        raise SteeringSpecError(
            "steer needs `hook_name` (e.g. 'blocks.12.hook_resid_post') or an `sae` to take it from"
        )
    hook_name = drv.hook_name(hook_name)
    if intervention is None:
        if sae is not None:
            intervention = sae_directions.sae_intervention(
                sae, feature, strength=strength, mode=mode, normalize=normalize, relative=relative
            )
        else:
            intervention = AddDirection(_as_direction(direction, normalize, relative), strength, relative)
    if gate_obj.needs_tokens and getattr(model, "tokenizer", None) is None:
        raise ValueError(f"{gate_obj!r} reads the text, but the model has no tokenizer: set model.tokenizer")

    result = SteeringResult(hook_name=hook_name, gate=gate_obj)
    tracker = SequenceTracker.acquire(model)
    fn: _SteerHook | None = None
    try:
        fn = _SteerHook(tracker, gate_obj.runner(getattr(model, "tokenizer", None)), intervention, result)
        model.add_hook(hook_name, fn, is_permanent=True)
        yield result
    finally:
        if fn is not None:
            _remove_hook(model, hook_name, fn)
            fn.flush()
        tracker.release()
    if warn_never_opened:
        _warn_unopened(result)


def _warn_unopened(result: SteeringResult) -> None:
    if not result.records:
        warnings.warn(
            f"steer at {result.hook_name} with {result.gate!r}: the model never ran inside the block, "
            "so nothing was steered",
            GateNeverOpenedWarning,
            stacklevel=3,
        )
        return
    bad = [(i, rec.never_opened) for i, rec in enumerate(result.records) if rec.never_opened]
    if bad:
        where = "; ".join(f"sequence {i}: rows {rows}" for i, rows in bad)
        hint = (
            " Does the text contain `<think>` (use r1_chat_tokens) and enough new tokens to finish the prefix?"
            if "ResponsePrefix" in repr(result.gate)
            else " Check the pattern/position and max_new_tokens."
        )
        warnings.warn(
            f"steer at {result.hook_name}: gate {result.gate!r} never opened ({where}); nothing was steered "
            f"there.{hint} See the SteeringResult (`with steer(...) as result`).",
            GateNeverOpenedWarning,
            stacklevel=3,
        )
