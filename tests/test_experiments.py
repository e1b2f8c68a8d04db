"""The findings experiments on the embedded tiny R1, each checked against an independent computation on the same
run: plain generate/forward calls, the SAE's encoder applied by hand, brute-force attention statistics."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from r1_plugin.experiments import ExperimentError, oversteer, prefix_gating, segments, sink_check
from r1_plugin.experiments.base import bootstrap_ci, edit_distance, repeated_ngram_rate
from r1_plugin.experiments.segmentation import SEGMENTS, js_divergence, segment_labels
from r1_plugin.sinks import SinkThresholds

PROMPTS = ["What is 7 + 8?", "Which is larger, 3 or 9?"]
FEATURE = 398  # the demo's "before backtracking" feature of the embedded SAE
STRENGTH = 21.0  # ~3 x its top activation in the feature database: it changes the tiny model's text
MAX_NEW = 44


@pytest.fixture(scope="module")
def tiny(hf_cache: Path) -> tuple[Any, Any]:
    """The embedded tiny R1 and its SAE, loaded by path as the demo loads them."""
    from r1_plugin.demo.run import DemoConfig, load_model, load_sae

    cfg = DemoConfig()
    return load_model(cfg), load_sae(cfg)


@pytest.fixture(scope="module")
def traces(tiny: tuple[Any, Any]) -> list[torch.Tensor]:
    """Two complete unsteered R1 traces of the tiny model (prompt, prefix, thinking, `</think>`, answer)."""
    from r1_plugin.chat import r1_chat_tokens

    model, _ = tiny
    out = []
    for prompt in PROMPTS:
        with torch.no_grad():
            seq = model.generate(r1_chat_tokens(model, prompt), max_new_tokens=80, do_sample=False,
                                 use_past_kv_cache=True, stop_at_eos=True, verbose=False).clone()
        assert "</think>" in model.to_str_tokens(seq[0])
        out.append(seq)
    return out


def _plain_generate(model: Any, tokens: torch.Tensor, max_new: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(tokens, max_new_tokens=max_new, do_sample=False, use_past_kv_cache=True,
                              stop_at_eos=True, verbose=False)[0].clone()


def _expression(model: Any, sae: Any, seq: torch.Tensor, start: int) -> float:
    """Mean over positions >= start of the feature's activation: the SAE encoder by hand on the cached residual."""
    with torch.no_grad():
        _, cache = model.run_with_cache(seq.unsqueeze(0), names_filter="blocks.2.hook_resid_post")
        acts = sae.encode(cache["blocks.2.hook_resid_post"][0])
    return float(acts[start:, FEATURE].mean())


# --- helpers against naive versions -------------------------------------------------------------------------
def _naive_edit(a: list[int], b: list[int]) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        for j in range(len(b) + 1):
            if i == 0 or j == 0:
                d[i][j] = i + j
            else:
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_helpers_against_naive_versions() -> None:
    rng = random.Random(0)
    for _ in range(60):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        assert edit_distance(a, b) == _naive_edit(a, b)
    assert repeated_ngram_rate([1, 2, 3, 1, 2, 3, 1], n=3) == pytest.approx(2 / 5)
    assert math.isnan(repeated_ngram_rate([1, 2], n=3))
    values = [0.5, 1.5, -2.0, 4.0, math.nan]
    mean, low, high, n = bootstrap_ci(values, n_boot=500, seed=3)
    x = np.array(values[:4])
    draws = np.random.default_rng(3).integers(0, 4, size=(500, 4))
    boot = sorted(float(np.mean([x[i] for i in row])) for row in draws)
    assert n == 4 and mean == pytest.approx(x.mean())
    assert low == pytest.approx(np.quantile(boot, 0.025)) and high == pytest.approx(np.quantile(boot, 0.975))
    assert bootstrap_ci(values, n_boot=500, seed=3) == (mean, low, high, n)
    from scipy.spatial.distance import jensenshannon

    p, q = np.array([0.2, 0.0, 0.5, 0.1]), np.array([0.1, 0.3, 0.0, 0.4])
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)
    assert js_divergence(p, p) == pytest.approx(0.0)


def test_segment_labels_on_a_hand_made_trace() -> None:
    toks = ["<bos>", "Q", "<think>", "\n", "Okay", ",", " so", ".", "\n", "\n", "Step", ".", "</think>", "\n",
            "A", "<eos>"]
    labels = segment_labels(toks, 7)
    names = [SEGMENTS[i] for i in labels]
    assert names[:4] == ["prompt"] * 4  # the newline after <think> is the template's
    assert names[4:8] == ["response_prefix"] * 4  # 'Okay, so.' ends at the '.'
    assert names[8:13] == ["thinking"] * 5  # through </think>
    assert names[13:] == ["answer"] * 3
    with pytest.raises(ExperimentError, match="think"):
        segment_labels(["a", "b"], None)


# --- prefix gating ------------------------------------------------------------------------------------------
def test_prefix_gating_against_plain_generations(tiny: tuple[Any, Any]) -> None:
    from r1_plugin.chat import r1_chat_tokens
    from r1_plugin.experiments.gating import default_conditions
    from r1_plugin.steering import FromPositions, Until, steer

    model, sae = tiny
    result = prefix_gating(model, PROMPTS, sae=sae, feature=FEATURE, strength=STRENGTH, target_text="Wait",
                           target_tokens="Wait", max_new_tokens=MAX_NEW, n_boot=200, seed=1)
    table = result.table
    assert list(dict.fromkeys(table["condition"])) == ["unsteered", "first_response_token", "response_prefix_only",
                                                       "after_response_prefix", "thinking_only"]
    wait_ids = model.tokenizer("Wait", add_special_tokens=False)["input_ids"]
    for p_idx, prompt in enumerate(PROMPTS):
        tokens = r1_chat_tokens(model, prompt)
        n = tokens.shape[1]
        base = _plain_generate(model, tokens, MAX_NEW)
        rows = table[table["prompt_index"] == p_idx].set_index("condition")
        assert rows.loc["unsteered", "text"] == model.tokenizer.decode(base[n:].tolist())
        assert rows.loc["unsteered", "expression"] == pytest.approx(_expression(model, sae, base, n), abs=1e-5)
        strs = model.to_str_tokens(base)
        prefix_end = next(i for i in range(strs.index("<think>") + 2, len(strs)) if strs[i] == ".")
        assert rows.loc["first_response_token", "open_at"] == n
        assert rows.loc["response_prefix_only", "open_at"] == n
        assert rows.loc["response_prefix_only", "close_at"] == prefix_end + 1
        assert rows.loc["after_response_prefix", "open_at"] == prefix_end + 1
        for cond in ("first_response_token", "response_prefix_only", "after_response_prefix", "thinking_only"):
            row = rows.loc[cond]
            open_at = int(row["open_at"])
            close_at = None if pd_isna(row["close_at"]) else int(row["close_at"])
            # the same steering in a plain generate call gives the same text
            with steer(model, sae=sae, feature=FEATURE, strength=STRENGTH, gate=default_conditions()[cond],
                       warn_never_opened=False):
                seq = _plain_generate(model, tokens, MAX_NEW)
            seq_text = model.tokenizer.decode(seq[n:].tolist())
            assert row["text"] == seq_text
            # ... and replayed by hand over the finished sequence in one uncached forward, the same log-probs
            gate = FromPositions([open_at])
            if close_at is not None:
                gate = gate & Until(FromPositions([close_at]))
            with torch.no_grad(), steer(model, sae=sae, feature=FEATURE, strength=STRENGTH, gate=gate):
                logits = model(seq.unsqueeze(0))[0]
            lp = logits.log_softmax(-1)[n - 1 : len(seq) - 1, wait_ids].logsumexp(-1).mean()
            assert row["target_logprob"] == pytest.approx(float(lp), abs=2e-4), cond
            gen, base_gen = seq[n:].tolist(), base[n:].tolist()
            assert row["edit_distance"] == _naive_edit(base_gen, gen)
            diffs = [i for i, (x, y) in enumerate(zip(base_gen, gen)) if x != y]
            first = diffs[0] if diffs else (None if len(gen) == len(base_gen) else min(len(gen), len(base_gen)))
            assert (pd_isna(row["first_diff"]) and first is None) or row["first_diff"] == first
            assert row["expression"] == pytest.approx(_expression(model, sae, seq, n), abs=1e-5)
            assert row["target_rate"] == pytest.approx(seq_text.count("Wait") / len(gen))
            assert row["expression_effect"] == pytest.approx(row["expression"] - rows.loc["unsteered", "expression"])
            if cond == "thinking_only" and close_at is not None:
                assert model.to_str_tokens(seq)[close_at - 1] == "</think>"
    # steering only inside the prefix leaves R1's text as it was; after the prefix it changes it
    assert (table[table["condition"] == "response_prefix_only"]["edit_distance"] == 0).all()
    assert (table[table["condition"] == "after_response_prefix"]["edit_distance"] > 0).all()
    summary = result.summary.set_index(["condition", "metric"])
    for cond in ("first_response_token", "after_response_prefix"):
        per_prompt = table[table["condition"] == cond]["expression_effect"]
        mean, low, high = summary.loc[(cond, "expression_effect"), ["mean", "ci_low", "ci_high"]]
        assert mean == pytest.approx(per_prompt.mean()) and low <= mean <= high


def pd_isna(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- segments -----------------------------------------------------------------------------------------------
def test_segments_against_raw_sae_activations(tiny: tuple[Any, Any], traces: list[torch.Tensor]) -> None:
    model, sae = tiny
    result = segments(model, traces, sae=sae, generate=False, top_k=3)
    n_feat = sae.W_dec.shape[0]
    fired = torch.zeros(4, n_feat, dtype=torch.float64)
    summed = torch.zeros(4, n_feat, dtype=torch.float64)
    counts = torch.zeros(4, dtype=torch.float64)
    for seq in traces:
        strs = model.to_str_tokens(seq[0])
        think = strs.index("<think>")
        start = think + 1
        while not strs[start].strip():
            start += 1
        end = next(i for i in range(start, len(strs)) if strs[i] == ".")
        close = strs.index("</think>")
        with torch.no_grad():
            _, cache = model.run_with_cache(seq, names_filter="blocks.2.hook_resid_post")
            acts = sae.encode(cache["blocks.2.hook_resid_post"][0]).double()
        for s, (lo, hi) in enumerate([(0, start), (start, end + 1), (end + 1, close + 1), (close + 1, len(strs))]):
            counts[s] += hi - lo
            fired[s] += (acts[lo:hi] > 0).sum(0)
            summed[s] += acts[lo:hi].sum(0)
    assert (counts > 0).all()
    freq, mean = fired / counts[:, None], summed / counts[:, None]
    np.testing.assert_allclose(result.arrays["counts"], counts.numpy())
    np.testing.assert_allclose(result.arrays["frequency"], freq.numpy(), atol=1e-12)
    np.testing.assert_allclose(result.arrays["mean_activation"], mean.numpy(), rtol=1e-5, atol=1e-6)
    top = result.tables["top_features"]
    for s, name in enumerate(SEGMENTS):
        rest = (fired.sum(0) - fired[s]) / (counts.sum() - counts[s])
        score = freq[s] - rest
        best = top[(top["segment"] == name) & (top["rank"] == 1)].iloc[0]
        assert best["score"] == pytest.approx(float(score.max()))
        assert float(score[int(best["feature"])]) == pytest.approx(float(score.max()))
    p, q = freq[0].numpy(), freq[2].numpy()
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
    js = (kl(p, m) + kl(q, m)) / 2 / math.log(2)
    pairs = result.summary.set_index(["segment_a", "segment_b"])
    assert pairs.loc[("prompt", "thinking"), "js_divergence"] == pytest.approx(js, rel=1e-9)
    assert set(result.table["feature"]) == set(top["feature"])
    assert result.plot().__class__.__name__ == "Figure"


# --- sinks --------------------------------------------------------------------------------------------------
def test_sinks_against_brute_force(tiny: tuple[Any, Any], traces: list[torch.Tensor]) -> None:
    model, _ = tiny
    eps, min_value, min_ratio = 0.05, 2.0, 5.0  # low thresholds, so the counts are not all zero
    th = SinkThresholds(epsilon=eps, min_value=min_value, min_ratio=min_ratio, min_queries=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the experiment itself uses no deprecated keyword
        result = sink_check(model, traces, generate=False, thresholds=th, n_boot=200)
    table = result.table.set_index(["prompt_index", "role"])
    n_layers = model.cfg.n_layers
    profile_rows = []
    for p_idx, seq in enumerate(traces):
        strs = model.to_str_tokens(seq[0])
        end = next(i for i in range(strs.index("<think>") + 2, len(strs)) if strs[i] == ".")
        names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
        names += [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
        with torch.no_grad():
            _, cache = model.run_with_cache(seq, names_filter=names)
        length = seq.shape[1]
        alpha = torch.stack([
            torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0, :, k:, k].double().mean(-1) for k in range(length)],
                        -1) for i in range(n_layers)
        ])  # [layer, head, key]
        resid = torch.stack([cache[f"blocks.{i}.hook_resid_post"][0].double() for i in range(n_layers)])
        norms = resid.norm(dim=-1)  # [layer, pos]
        ratio = norms / norms.median(dim=-1, keepdim=True).values
        med_abs = resid.abs().reshape(n_layers, -1).median(dim=-1).values
        for role, pos in (("bos", 0), ("prefix_end", end), ("thinking_start", end + 1)):
            row = table.loc[(p_idx, role)]
            assert row["position"] == pos
            rate = float((alpha[:, :, pos] > eps).double().mean())
            assert row["sink_rate"] == pytest.approx(rate)
            assert row["alpha_mean"] == pytest.approx(float(alpha[:, :, pos].mean()), rel=1e-6)
            assert row["norm_ratio_max"] == pytest.approx(float(ratio[:, pos].max()), rel=1e-4)
            at = resid[:, pos].abs()
            massive = int(((at > min_value) & (at / med_abs[:, None] >= min_ratio)).sum())
            assert row["n_massive"] == massive
            assert row["is_sink"] == float(rate >= 0.1 and length - pos >= 4)
            for layer in range(n_layers):
                profile_rows.append((role, layer, float((alpha[layer, :, pos] > eps).double().mean())))
    summary = result.summary.set_index(["role", "metric"])
    for role in ("bos", "prefix_end", "thinking_start"):
        assert summary.loc[(role, "sink_rate"), "mean"] == pytest.approx(
            float(np.mean([table.loc[(p, role), "sink_rate"] for p in range(len(traces))])))
    diff = [table.loc[(p, "prefix_end"), "alpha_mean"] - table.loc[(p, "thinking_start"), "alpha_mean"]
            for p in range(len(traces))]
    assert summary.loc[("prefix_end - thinking_start", "alpha_mean"), "mean"] == pytest.approx(float(np.mean(diff)))
    layers = result.tables["layers"]
    layers = layers[layers["metric"] == "sink_rate"].set_index(["role", "layer"])["mean"]
    for role in ("bos", "prefix_end"):
        for layer in range(n_layers):
            expected = np.mean([v for r, li, v in profile_rows if r == role and li == layer])
            assert layers.loc[(role, layer)] == pytest.approx(expected)


def test_sinks_old_threshold_keywords_warn_and_match(tiny: tuple[Any, Any], traces: list[torch.Tensor]) -> None:
    """`sink_check(..., epsilon=...)` (the old keywords) still runs, with a DeprecationWarning naming the new spelling,
    and gives exactly the table of `thresholds=SinkThresholds(...)`; an unknown keyword is a TypeError."""
    model, _ = tiny
    new = sink_check(model, traces[:1], generate=False, thresholds=SinkThresholds(epsilon=0.05, min_queries=4),
                     n_boot=20)
    with pytest.warns(DeprecationWarning, match=r"thresholds=SinkThresholds\(epsilon=0.05, min_queries=4\)"):
        old = sink_check(model, traces[:1], generate=False, epsilon=0.05, min_queries=4, n_boot=20)
    pd.testing.assert_frame_equal(old.table, new.table)
    assert old.config == new.config and new.config["epsilon"] == 0.05 and new.config["min_queries"] == 4
    with pytest.raises(TypeError, match="epsilonn"):
        sink_check(model, traces[:1], generate=False, epsilonn=0.05)


# --- oversteer ----------------------------------------------------------------------------------------------
def test_oversteer_against_plain_generations(tiny: tuple[Any, Any]) -> None:
    from r1_plugin.chat import r1_chat_tokens
    from r1_plugin.steering import AfterResponsePrefix, FromPositions, steer
    from r1_plugin.steering.sweep import find_reversions

    model, sae = tiny
    strengths = [0.0, 14.0, 56.0]
    result = oversteer(model, PROMPTS[:1], sae=sae, feature=FEATURE, strengths=strengths, target_tokens="Wait",
                       max_new_tokens=32, n_boot=100)
    table = result.table
    tokens = r1_chat_tokens(model, PROMPTS[0])
    n = tokens.shape[1]
    wait_ids = model.tokenizer("Wait", add_special_tokens=False)["input_ids"]
    for rec in table.itertuples():
        if rec.baseline:
            seq = _plain_generate(model, tokens, 32)
        else:
            with steer(model, sae=sae, feature=FEATURE, strength=rec.strength, gate=AfterResponsePrefix(),
                       warn_never_opened=False):
                seq = _plain_generate(model, tokens, 32)
        eos = model.tokenizer.eos_token_id
        gen = seq[n:].tolist()
        gen = gen[: gen.index(eos)] if eos in gen else gen
        seq = torch.cat([tokens[0], torch.tensor(gen, dtype=torch.long)])
        assert rec.n_generated == len(gen)
        with torch.no_grad():
            lp = model(seq.unsqueeze(0))[0].log_softmax(-1)
        ll = float(np.mean([float(lp[t - 1, seq[t]]) for t in range(n, len(seq))]))
        assert rec.coherence_ll == pytest.approx(ll, abs=1e-5)
        grams = [tuple(gen[i : i + 3]) for i in range(len(gen) - 2)]
        assert rec.repeated_ngram_rate == pytest.approx(sum(g in grams[:i] for i, g in enumerate(grams)) / len(grams))
        assert rec.expression == pytest.approx(_expression(model, sae, seq, n), abs=1e-5)
        if not rec.baseline and rec.strength > 0:
            with torch.no_grad(), steer(model, sae=sae, feature=FEATURE, strength=rec.strength,
                                        gate=FromPositions([int(rec.gate_open_at)])):
                lp = model(seq.unsqueeze(0))[0].log_softmax(-1)
        assert rec.target_logprob == pytest.approx(float(lp[n - 1 : len(seq) - 1, wait_ids].logsumexp(-1).mean()),
                                                   abs=2e-4)
    steered = table[~table["baseline"]]
    base = float(table[table["baseline"]]["target_logprob"].iloc[0])
    flags, _ = find_reversions(list(steered["strength"]), list(steered["target_logprob"]), base, 0.5)
    assert list(steered["reverted"]) == flags
    assert result.config["primary_metric"] == "target_logprob"
    # the strongest push makes the text less like the model's own
    assert steered.iloc[-1]["coherence_ll"] < steered.iloc[0]["coherence_ll"]
    assert {"target_logprob_effect", "coherence_ll", "repeated_ngram_rate", "reverted"} <= set(result.summary["metric"])


# --- the result object --------------------------------------------------------------------------------------
def test_result_plot_markdown_files_and_wandb(tiny: tuple[Any, Any], traces: list[torch.Tensor],
                                              tmp_path: Path) -> None:
    import json

    from matplotlib.figure import Figure

    from r1_plugin.tracking import read_offline_run, start_run

    model, sae = tiny
    with start_run("experiment", {"test": True}, mode="offline", dir=tmp_path / "wb") as tracker:
        result = sink_check(model, traces[:1], generate=False, n_boot=50, tracker=tracker)
        run_dir = tracker.run_dir
    fig = result.plot()
    assert isinstance(fig, Figure) and len(fig.axes) >= 3
    md = result.to_markdown()
    assert md.startswith("# sinks") and "## Summary" in md and "## layers" in md and "prefix_end" in md
    files = result.save(tmp_path / "out")
    assert files["plot"].read_bytes().startswith(b"\x89PNG")
    payload = json.loads(files["results"].read_text())
    assert payload["name"] == "sinks" and len(payload["table"]) == 3
    run = read_offline_run(run_dir)
    assert {"sinks/table", "sinks/summary", "sinks/layers"} <= set(run.tables)
    assert run.summary["sinks/prefix_end/sink_rate"] == pytest.approx(
        float(result.summary.set_index(["role", "metric"]).loc[("prefix_end", "sink_rate"), "mean"]))
    with pytest.raises(ExperimentError, match="either an SAE"):
        prefix_gating(model, PROMPTS, strength=1.0)
    with pytest.raises(ExperimentError, match="no prompts"):
        segments(model, [], sae=sae)


def test_prefix_gating_with_a_direction_reads_the_projection(tiny: tuple[Any, Any]) -> None:
    """A plain direction (the feature's decoder row) steers like the SAE feature; expression is the projection
    on the unit direction, recomputed from the cached residual."""
    from r1_plugin.chat import r1_chat_tokens
    from r1_plugin.steering import AfterResponsePrefix

    model, sae = tiny
    direction = sae.W_dec[FEATURE].detach().clone()
    gates = {"after_response_prefix": AfterResponsePrefix()}
    by_dir = prefix_gating(model, PROMPTS[:1], direction=direction, hook_name="blocks.2.hook_resid_post",
                           strength=STRENGTH, conditions=gates, max_new_tokens=MAX_NEW, n_boot=50)
    by_sae = prefix_gating(model, PROMPTS[:1], sae=sae, feature=FEATURE, strength=STRENGTH, conditions=gates,
                           max_new_tokens=MAX_NEW, n_boot=50)
    assert list(by_dir.table["text"]) == list(by_sae.table["text"])
    tokens = r1_chat_tokens(model, PROMPTS[0])
    n = tokens.shape[1]
    unit = direction / direction.norm()
    for rec in by_dir.table.itertuples():
        ids = model.tokenizer(rec.text, add_special_tokens=False)["input_ids"]
        seq = torch.cat([tokens[0], torch.tensor(ids)]).unsqueeze(0)
        with torch.no_grad():
            _, cache = model.run_with_cache(seq, names_filter="blocks.2.hook_resid_post")
        proj = cache["blocks.2.hook_resid_post"][0, n:] @ unit
        assert rec.expression == pytest.approx(float(proj.mean()), abs=1e-4)
    with pytest.raises(ExperimentError, match="hook_name"):
        prefix_gating(model, PROMPTS[:1], direction=direction, strength=1.0)


def test_reversion_region_and_its_shading() -> None:
    """The plot shades from the first strength (per sign) where at least half the prompts reverted."""
    import pandas as pd

    from r1_plugin.experiments.base import ExperimentResult
    from r1_plugin.experiments.oversteering import _draw, reversion_region

    rows = [(s, "reverted", r) for s, r in ((-8, 0.5), (-2, 0.0), (2, 0.0), (4, 0.0), (8, 1.0), (16, 0.5))]
    rows += [(s, "expression_effect", e) for s, e in ((-8, -1.0), (-2, -2.0), (2, 1.0), (4, 3.0), (8, 0.5),
                                                      (16, 0.2))]
    summary = pd.DataFrame([{"strength": float(s), "metric": m, "mean": v, "ci_low": v, "ci_high": v, "n": 2}
                            for s, m, v in rows])
    assert reversion_region(summary) == [(8.0, 16.0), (-8.0, -8.0)]
    result = ExperimentResult(name="oversteer", table=pd.DataFrame(), summary=summary,
                              config={"steering": "x", "gate": "g"}, draw=_draw)
    fig = result.plot()
    assert len(fig.axes[0].patches) == 2  # one shaded span per sign


def test_experiment_modules_are_not_shadowed_by_their_functions() -> None:
    """`import r1_plugin.experiments.<module> as m` gives the module; the package exports the four functions."""
    import importlib
    import inspect

    import r1_plugin.experiments as package

    for module, function in (("gating", "prefix_gating"), ("oversteering", "oversteer"),
                             ("segmentation", "segments"), ("sink_positions", "sink_check")):
        mod = importlib.import_module(f"r1_plugin.experiments.{module}")
        assert inspect.ismodule(mod) and inspect.ismodule(getattr(package, module))
        assert getattr(package, function) is getattr(mod, function) and inspect.isfunction(getattr(mod, function))


def test_old_name_sinks_warns_and_is_sink_check() -> None:
    """`from r1_plugin.experiments import sinks` (the old name) still gives `sink_check`, with a DeprecationWarning
    naming the new one; the old name is not bound in the package, and other unknown names stay AttributeErrors."""
    import r1_plugin.experiments as package

    assert "sinks" not in vars(package) and "sinks" not in package.__all__
    with pytest.warns(DeprecationWarning, match=r"r1_plugin\.experiments\.sinks is deprecated.*sink_check"):
        from r1_plugin.experiments import sinks as old
    assert old is sink_check
    with pytest.warns(DeprecationWarning, match="sink_check"):
        assert package.sinks is sink_check
    with pytest.raises(AttributeError, match="no_such_experiment"):
        package.no_such_experiment  # noqa: B018
    with pytest.raises(ImportError):
        from r1_plugin.experiments import no_such_experiment  # noqa: F401
