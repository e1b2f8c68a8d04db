"""Over-steering sweeps: run a list of strengths and flag "reversion", where the effect rises and then falls back
toward the unsteered baseline as strength grows (what Goodfire saw when over-steering R1, unlike non-reasoning
models, which drift further toward the concept until they become incoherent).

All strengths of a prompt run as rows of one batch (`steer` takes one strength per row), `batch_size` rows at a
time. Per strength it records the continuation, where the gate opened, the steered feature's activation (the SAE
feature, read at `readout_hook` after steering; or the projection on the steering direction), the mean KL of the
steered from the unsteered next-token distribution over the steered positions, and the caller's behaviour metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from r1_plugin.steering.gates import FromPositions, Gate, as_gate
from r1_plugin.steering.spec import SteeringSpec, SteeringSpecError, check_strength, keywords_given
from r1_plugin.steering.steer import resolve_hook_name, steer

Behaviour = Callable[[str], float]


def find_reversions(
    strengths: Sequence[float], values: Sequence[float], baseline: float, drop: float = 0.5, min_effect: float = 1e-6
) -> tuple[list[bool], float | None]:
    """Per strength, whether the effect |value - baseline| fell below `(1 - drop)` x the largest effect seen at a
    smaller |strength| of the same sign; and the strength of the largest effect (None if no effect).

    Strengths of each sign are walked outwards from 0 separately; NaN values are skipped.
    """
    flags = [False] * len(strengths)
    best_strength: float | None = None
    best_effect = min_effect
    for sign in (1.0, -1.0):
        order = sorted((i for i, s in enumerate(strengths) if s * sign > 0), key=lambda i: abs(strengths[i]))
        peak = 0.0
        for i in order:
            if math.isnan(values[i]):
                continue
            effect = abs(values[i] - baseline)
            if peak > min_effect and effect < (1.0 - drop) * peak:
                flags[i] = True
            peak = max(peak, effect)
            if effect > best_effect:
                best_effect, best_strength = effect, strengths[i]
    return flags, best_strength


@dataclass
class SweepResult:
    """A steering sweep: one table row per (prompt, strength); `plot()` and `log(tracker)` present it.

    Columns: prompt_index, prompt, strength, text, baseline_text, gate_open_at, gate_close_at, n_steered, feature_act, kl,
    behaviour (if given), reverted (on the primary metric), reverted_<metric>, peak_strength.
    """

    table: pd.DataFrame
    primary_metric: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def reverted(self) -> pd.DataFrame:
        """The rows flagged as reversion."""
        return self.table[self.table["reverted"]]

    def plot(self, metrics: Sequence[str] | None = None) -> Any:
        """A matplotlib figure: each metric against strength, one line per prompt, reversions marked with x."""
        from matplotlib.figure import Figure  # the object API: no pyplot state, the user's backend untouched

        cols = list(metrics or [m for m in ("behaviour", "feature_act", "kl") if m in self.table])
        fig = Figure(figsize=(4.2 * len(cols), 3.4))
        axes = fig.subplots(1, len(cols), squeeze=False)
        for ax, col in zip(axes[0], cols):
            for idx, frame in self.table.groupby("prompt_index"):
                frame = frame.sort_values("strength")
                ax.plot(frame["strength"], frame[col], marker="o", label=f"prompt {idx}")
                flag = f"reverted_{col}" if f"reverted_{col}" in frame else None
                if flag is not None and frame[flag].any():
                    hit = frame[frame[flag]]
                    ax.scatter(hit["strength"], hit[col], marker="x", s=90, color="red", zorder=5,
                               label="reversion" if idx == 0 else None)
            ax.set_xlabel("strength")
            ax.set_title(col)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        return fig

    def log(self, tracker: Any, key: str = "steering_sweep") -> None:
        """Log the table, the generations, the plot and reversion counts through an r1_plugin `Tracker`."""
        tracker.log_table(key, self.table)
        tracker.log_generations(
            [
                dict(prompt=r.prompt, unsteered=r.baseline_text, steered=r.text, gate_position=r.gate_open_at,
                     strength=r.strength, kl=r.kl, feature_act=r.feature_act, reverted=bool(r.reverted))
                for r in self.table.itertuples()
            ],
            key=f"{key}_generations",
        )
        tracker.log_figure(f"{key}_plot", self.plot())
        tracker.log_summary({f"{key}/n_reverted": int(self.table["reverted"].sum()),
                             f"{key}/primary_metric": self.primary_metric})


def _steering_of(spec: SteeringSpec | None, **keywords: Any) -> tuple[SteeringSpec, Any, Any, Any, Any, str]:
    """The sweep's one SteeringSpec (from `spec` or the steering keywords, not both) and its (sae, feature,
    direction, hook_name, mode)."""
    if spec is not None:
        if keywords_given(**keywords):
            raise SteeringSpecError("give the steering as `spec` or as keywords, not both")
    else:
        spec = SteeringSpec(**keywords)  # validated once, here
    return spec, spec.sae, spec.feature, spec.direction, spec.hook_name, spec.mode


def _readout_of(
    model: Any, sae: Any, feature: Any, direction: Any, hook_name: str | None, readout_sae: Any,
    readout_feature: Any, readout_hook: str | None,
) -> tuple[str, tuple[str, Any, Any, torch.Tensor | None]]:
    """The steering hook (default: the SAE's) and what is read as "the steered feature": (readout hook,
    readout SAE, readout feature(s), unit direction when read without an SAE)."""
    from r1_plugin.steering.sae_directions import feature_direction, sae_hook_name

    if sae is not None and hook_name is None:
        hook_name = sae_hook_name(sae)
    if hook_name is None:
        raise ValueError("sweep_strengths needs hook_name (or an sae to take it from)")
    readout_sae = readout_sae if readout_sae is not None else sae
    if readout_feature is None and readout_sae is sae and feature is not None:
        # the steered feature(s); several are read out as the sum of their activations
        readout_feature = [int(f) for f in feature] if isinstance(feature, (list, tuple)) else feature
    if readout_sae is not None and readout_feature is None:
        raise ValueError("readout_sae needs readout_feature (a feature id, or a list whose activations are summed)")
    readout_hook = resolve_hook_name(
        model, readout_hook or (sae_hook_name(readout_sae) if readout_sae is not None else hook_name)
    )
    unit = None
    if readout_sae is None:
        vec = feature_direction(sae, feature) if sae is not None else torch.as_tensor(direction).float()
        unit = (vec / vec.norm()).detach()
    return hook_name, (readout_hook, readout_sae, readout_feature, unit)


def _prompt_rows(
    model: Any, drv: Any, prompt: str | torch.Tensor, p_idx: int, strengths: list[float], gate: Gate,
    spec: SteeringSpec, batch_size: int, max_new_tokens: int, chat: bool,
    readout: tuple[str, Any, Any, torch.Tensor | None],
) -> list[dict[str, Any]]:
    """One prompt's rows: the unsteered baseline, then one row per strength (generated `batch_size` at a time)."""
    steer_kwargs: dict[str, Any] = dict(spec=spec)
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens)  # greedy, KV-cached, stops at EOS
    eos = getattr(model.tokenizer, "eos_token_id", None)
    tokens = drv.prompt_tokens(prompt, chat)
    if tokens.shape[0] != 1:
        raise ValueError("each prompt must be one sequence ([1, seq] ids or a string)")
    n_prompt = tokens.shape[1]
    with torch.no_grad():
        baseline = drv.generate(tokens, **gen_kwargs)
    baseline_text = model.tokenizer.decode(baseline[0, n_prompt:])
    prompt_text = prompt if isinstance(prompt, str) else model.tokenizer.decode(tokens[0])
    steered_rows: list[dict[str, Any]] = []
    gate_at: int | None = None
    gate_close: int | None = None
    for start in range(0, len(strengths), batch_size):
        chunk = strengths[start : start + batch_size]
        batch = tokens.expand(len(chunk), -1)
        with torch.no_grad(), steer(model, strength=chunk, gate=gate, warn_never_opened=False,
                                    **steer_kwargs) as result:
            out = drv.generate(batch, **gen_kwargs)
        open_at, close_at = result.last.open_at, result.last.close_at
        if gate_at is None:
            gate_at, gate_close = next(((o, c) for o, c in zip(open_at, close_at) if o is not None),
                                       (None, None))
        metrics = _row_metrics(model, out, n_prompt, open_at, close_at, eos, *readout, (chunk, steer_kwargs))
        for i, s in enumerate(chunk):
            steered_rows.append(dict(
                prompt_index=p_idx, prompt=prompt_text, strength=s, baseline=False,
                text=model.tokenizer.decode(out[i, n_prompt:]), baseline_text=baseline_text,
                gate_open_at=open_at[i], gate_close_at=close_at[i], n_steered=metrics[i]["n_steered"],
                feature_act=metrics[i]["feature_act"], kl=metrics[i]["kl"],
            ))
    # The gate is causal, so the unsteered run reaches it at the same positions: read the baseline there.
    base = _row_metrics(model, baseline, n_prompt, [gate_at], [gate_close], eos, *readout, None)[0]
    return [dict(prompt_index=p_idx, prompt=prompt_text, strength=0.0, baseline=True, text=baseline_text,
                 baseline_text=baseline_text, gate_open_at=gate_at, gate_close_at=gate_close, n_steered=0,
                 feature_act=base["feature_act"], kl=0.0), *steered_rows]


def sweep_strengths(
    model: Any,
    prompts: str | torch.Tensor | Sequence[str | torch.Tensor],
    strengths: Sequence[float],
    *,
    hook_name: str | None = None,
    direction: Any = None,
    sae: Any = None,
    feature: int | Sequence[int] | None = None,
    mode: str = "add",
    gate: Gate | str | int | None = None,
    normalize: bool = False,
    relative: bool = False,
    max_new_tokens: int = 64,
    behaviour: Behaviour | None = None,
    readout_sae: Any = None,
    readout_feature: int | Sequence[int] | None = None,
    readout_hook: str | None = None,
    batch_size: int = 8,
    reversion_drop: float = 0.5,
    chat: bool = True,
    tracker: Any = None,
    spec: SteeringSpec | None = None,
) -> SweepResult:
    """Generate greedily at each strength and tabulate text, feature activation, KL and behaviour; flag reversion.

    prompts: text (formatted with R1's chat template when `chat`), or `[1, seq]` ids, or a list of them.
    Steering arguments are those of `steer` (one of direction / sae+feature), or one `spec=SteeringSpec(...)`.
    The baseline is an unsteered generation. `readout_sae`/`readout_feature`/`readout_hook` choose the "steered
    feature" to read (default: the steering SAE feature at its hook, the sum of their activations for several;
    without an SAE, the projection on the unit direction at `hook_name`).
    The reversion flag uses `behaviour` when given, else the feature activation. `tracker`: an r1_plugin Tracker
    to log the result to.
    """
    from r1_plugin.drive import driver

    drv = driver(model)
    spec, sae, feature, direction, hook_name, mode = _steering_of(
        spec, hook_name=hook_name, direction=direction, sae=sae, feature=feature, mode=mode, normalize=normalize,
        relative=relative)
    strengths = [float(s) for s in check_strength(list(strengths), "strengths")]
    if not strengths:
        raise ValueError("sweep_strengths needs at least one strength")
    gate_obj = as_gate(gate)
    hook_name, readout = _readout_of(model, sae, feature, direction, hook_name, readout_sae, readout_feature,
                                     readout_hook)
    readout_hook, readout_feature = readout[0], readout[2]
    prompt_list = [prompts] if isinstance(prompts, (str, torch.Tensor)) else list(prompts)
    rows: list[dict[str, Any]] = []
    for p_idx, prompt in enumerate(prompt_list):
        rows += _prompt_rows(model, drv, prompt, p_idx, strengths, gate_obj, spec, batch_size, max_new_tokens, chat,
                             readout)
    table = pd.DataFrame(rows)
    if behaviour is not None:
        table["behaviour"] = [float(behaviour(t)) for t in table["text"]]
    primary = "behaviour" if behaviour is not None else "feature_act"
    table = _flag(table, primary, reversion_drop)
    result_obj = SweepResult(
        table=table,
        primary_metric=primary,
        config=dict(hook_name=hook_name, gate=repr(gate_obj), mode=mode, strengths=strengths,
                    max_new_tokens=max_new_tokens, readout_hook=readout_hook, readout_feature=readout_feature),
    )
    if tracker is not None:
        result_obj.log(tracker)
    return result_obj


def _flag(table: pd.DataFrame, primary: str, drop: float) -> pd.DataFrame:
    """Add reverted_<metric>, reverted (primary) and peak_strength, per prompt, against the baseline row."""
    table = table.copy()
    metrics = [m for m in ("behaviour", "feature_act") if m in table]
    for m in metrics:
        table[f"reverted_{m}"] = False
    table["peak_strength"] = float("nan")
    for _, frame in table.groupby("prompt_index"):
        base = frame[frame["baseline"]]
        steered = frame[~frame["baseline"]]
        for m in metrics:
            b = float(base[m].iloc[0]) if len(base) else 0.0
            flags, peak = find_reversions(list(steered["strength"]), [float(v) for v in steered[m]], b, drop)
            table.loc[steered.index, f"reverted_{m}"] = flags
            if m == primary:
                table.loc[frame.index, "peak_strength"] = float("nan") if peak is None else peak
    table["reverted"] = table[f"reverted_{primary}"]
    return table


def _row_metrics(
    model: Any,
    seqs: torch.Tensor,
    n_prompt: int,
    open_at: Sequence[int | None],
    close_at: Sequence[int | None],
    eos: int | None,
    readout_hook: str,
    readout_sae: Any,
    readout_feature: int | Sequence[int] | None,
    unit: torch.Tensor | None,
    steering: tuple[Sequence[float], dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """Per row: number of gated positions ([open_at, close_at), as the gate steered them), the mean feature
    activation there, and the mean KL(steered || unsteered) of the next-token distributions there (`steering`
    None: the unsteered baseline, KL 0)."""
    from r1_plugin.steering.sae_directions import encode_features

    length = seqs.shape[1]
    valid = torch.ones_like(seqs, dtype=torch.bool)
    if eos is not None:  # positions after a row's first generated EOS are padding from generate
        is_eos = (seqs[:, n_prompt:] == eos).long()
        after = (is_eos.cumsum(-1) - is_eos) > 0
        valid[:, n_prompt:] = ~after
    pos = torch.arange(length).unsqueeze(0)
    thr = torch.tensor([length if o is None else o for o in open_at]).unsqueeze(1)
    stop = torch.tensor([length if c is None else c for c in close_at]).unsqueeze(1)
    gated = (pos >= thr) & (pos < stop) & valid
    with torch.no_grad():
        if steering is not None:
            chunk, kwargs = steering
            with steer(model, strength=list(chunk), gate=FromPositions(list(open_at), until=list(close_at)),
                       warn_never_opened=False,
                       **kwargs):
                logits, cache = model.run_with_cache(seqs, names_filter=[readout_hook])
            clean_logits = model(seqs)
            kl = torch.nn.functional.kl_div(
                clean_logits.log_softmax(-1), logits.log_softmax(-1), log_target=True, reduction="none"
            ).sum(-1)
        else:
            _, cache = model.run_with_cache(seqs, names_filter=[readout_hook])
            kl = torch.zeros(seqs.shape, dtype=torch.float32)
        act = cache[readout_hook]
        if readout_sae is not None:
            feat = encode_features(readout_sae, act, readout_feature).sum(-1).float().cpu()
        else:
            assert unit is not None
            feat = (act.reshape(*act.shape[:2], -1) @ unit.to(act.device, act.dtype)).float().cpu()
    out = []
    for i in range(seqs.shape[0]):
        where = gated[i]
        n = int(where.sum())
        out.append(dict(
            n_steered=n if steering is not None else 0,
            feature_act=float(feat[i][where].mean()) if n else float("nan"),
            kl=float(kl[i].cpu()[where].mean()) if n else float("nan"),
        ))
    return out
