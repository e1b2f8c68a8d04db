"""Attention-sink and massive-activation detection: brute-force equality, planted sinks/activations, memory, tracker."""

from __future__ import annotations

import pytest
import torch
from sink_oracle import alpha_from_patterns
from transformer_lens import HookedTransformer, HookedTransformerConfig

from r1_plugin.sinks import (
    SinkDetectionError,
    SinkMonitor,
    SinkThresholdError,
    SinkThresholds,
    find_attention_sinks,
    find_massive_activations,
    scan_sinks,
)

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


@pytest.fixture(scope="module")
def qwen_distill(hf_cache: object) -> HookedTransformer:
    """The tiny random Qwen2 distill (GQA: 4 query heads, 2 KV heads) with R1's tokenizer tokens."""
    from r1_plugin.testing.distill_checkpoints import write_tiny_distill

    write_tiny_distill(QWEN)
    return HookedTransformer.from_pretrained_no_processing(QWEN, device="cpu")


# --- helpers ----------------------------------------------------------------------------------------------------
def brute_force_alpha(model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """alpha [batch, layer, head, seq] straight from run_with_cache's full patterns, looping over key positions."""
    mask = torch.ones_like(tokens) if mask is None else mask
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    pattern = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.cfg.n_layers)], 1)
    return alpha_from_patterns(pattern, mask)


def tiny_model(seed: int = 0, **overrides: object) -> HookedTransformer:
    """A small random HookedTransformer (no tokenizer)."""
    cfg = dict(
        n_layers=2, d_model=32, n_ctx=1100, d_head=8, n_heads=4, d_vocab=64, act_fn="gelu",
        normalization_type="LN", seed=seed,
    )
    cfg.update(overrides)
    return HookedTransformer(HookedTransformerConfig(**cfg))


def forced_sink_model(
    position: int, n_layers: int = 2, n_heads: int = 3, d_vocab: int = 64, n_ctx: int = 64
) -> HookedTransformer:
    """Attention-only model in which every head's queries i >= `position` put ~all attention on `position`.

    Only W_pos[position] has a component on residual dim 0; every key reads dim 0 (W_K), every query is the
    constant b_Q, so score(i, k) = 40 * x_k[0]; no head writes dim 0 back (W_O[..., 0] = 0).
    """
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=16, n_ctx=n_ctx, d_head=4, n_heads=n_heads, d_vocab=d_vocab, act_fn="relu",
        attn_only=True, normalization_type=None, positional_embedding_type="standard", seed=1,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.W_E[:, 0] = 0.0
        model.W_pos[:, 0] = 0.0
        model.W_pos[position, 0] = 1.0
        for block in model.blocks:
            block.attn.W_Q.zero_()
            block.attn.b_Q.fill_(20.0)
            block.attn.W_K.zero_()
            block.attn.W_K[:, 0, :] = 1.0
            block.attn.b_K.zero_()
            block.attn.W_O[..., 0] = 0.0
    return model


# --- alpha / sink_rate against run_with_cache ---------------------------------------------------------------------
def test_alpha_and_sink_rate_equal_brute_force() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    report = find_attention_sinks(model, tokens, SinkThresholds(epsilon=0.05, min_sink_rate=0.2, min_queries=3))
    expected = brute_force_alpha(model, tokens)
    assert report.batched and report.alpha.shape == (2, 2, 4, 40) and report.alpha.dtype == torch.float64
    torch.testing.assert_close(report.alpha, expected, rtol=0, atol=1e-12)
    rate = (expected > 0.05).double().mean(dim=(1, 2))
    torch.testing.assert_close(report.sink_rate, rate, rtol=0, atol=0)
    n_queries = torch.arange(40, 0, -1).expand(2, 40)
    torch.testing.assert_close(report.n_queries, n_queries)
    want = [[k for k in range(40) if rate[b, k] >= 0.2 and 40 - k >= 3] for b in range(2)]
    assert report.sink_positions == want and any(want)  # epsilon 0.05 makes some positions pass
    # Unbatched input (1-D or [1, seq]) has no batch dim; query chunks over the KV cache give the same alpha.
    single = find_attention_sinks(model, tokens[0])
    assert single.alpha.shape == (2, 4, 40) and not single.batched
    chunked = find_attention_sinks(model, tokens[:1], SinkThresholds(chunk_size=7))
    torch.testing.assert_close(chunked.alpha, expected[0], rtol=0, atol=1e-6)


def test_distill_gqa_brute_force_chunks_and_padding(qwen_distill: HookedTransformer) -> None:
    model = qwen_distill
    assert model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4  # GQA: hook_pattern has the query heads
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    report = find_attention_sinks(model, ids)
    torch.testing.assert_close(report.alpha, brute_force_alpha(model, ids)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(find_attention_sinks(model, ids, SinkThresholds(chunk_size=6)).alpha, report.alpha, rtol=0, atol=1e-5)

    # Padding: a left- and a right-padded copy of the first 15 tokens match the unpadded run at real positions.
    short = find_attention_sinks(model, ids[:, :15])
    pad = model.tokenizer.pad_token_id
    left = torch.cat([torch.full((1, 5), pad), ids[:, :15]], 1)
    right = torch.cat([ids[:, :15], torch.full((1, 5), pad)], 1)
    tokens = torch.cat([ids, left, right])
    mask = torch.ones_like(tokens)
    mask[1, :5] = 0
    mask[2, 15:] = 0
    for chunk in (None, 4):
        batch = find_attention_sinks(model, tokens, SinkThresholds(chunk_size=chunk), attention_mask=mask)
        assert batch.alpha.shape == (3, 2, 4, 20)
        torch.testing.assert_close(batch.alpha[0], report.alpha, rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.alpha[1, ..., 5:], short.alpha, rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.alpha[2, ..., :15], short.alpha, rtol=0, atol=1e-5)
        assert batch.alpha[1, ..., :5].isnan().all() and batch.alpha[2, ..., 15:].isnan().all()
        assert batch.sink_rate[1, :5].isnan().all()
        torch.testing.assert_close(batch.n_queries[1, 5:], short.n_queries)
    torch.testing.assert_close(
        find_attention_sinks(model, tokens, attention_mask=mask).alpha[1:].nan_to_num(),
        brute_force_alpha(model, tokens, mask)[1:].nan_to_num(), rtol=0, atol=1e-12,
    )


# --- a forced sink ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", [0, 6])
def test_forced_sink_is_detected_there(position: int) -> None:
    model = forced_sink_model(position)
    tokens = torch.randint(1, 64, (32,), generator=torch.Generator().manual_seed(2))
    report = find_attention_sinks(model, tokens)
    assert report.sink_positions == [position]
    assert float(report.sink_rate[position]) == 1.0
    assert float(report.alpha[:, :, position].min()) > 0.99
    others = torch.cat([report.sink_rate[:position], report.sink_rate[position + 1 :]])
    assert float(others.max()) == 0.0
    df = report.to_dataframe()
    assert df.loc[df.is_sink, "position"].tolist() == [position]
    assert {"token", "sink_rate", "alpha_max", "alpha_max_layer", "alpha_max_head", "n_queries"} <= set(df.columns)
    assert len(report.head_dataframe()) == 2 * 3 * 32


def test_min_queries_guards_the_last_positions() -> None:
    # Forced sink at the second-to-last position: alpha is ~1 there but only 2 queries see it.
    model = forced_sink_model(30)
    report = find_attention_sinks(model, torch.arange(1, 33))
    assert float(report.sink_rate[30]) == 1.0 and report.sink_positions == []
    assert find_attention_sinks(model, torch.arange(1, 33), SinkThresholds(min_queries=2)).sink_positions == [30]


# --- massive activations ------------------------------------------------------------------------------------------
def planted_model(position: int, dim: int, value: float) -> HookedTransformer:
    """A random LN model with one huge residual entry: W_pos[position, dim] = value."""
    model = tiny_model(seed=3, n_ctx=64)
    with torch.no_grad():
        model.W_pos[position, dim] = value
    return model


def test_planted_massive_activation_found_and_nothing_else() -> None:
    model = planted_model(position=5, dim=7, value=2500.0)
    tokens = torch.randint(0, 64, (30,), generator=torch.Generator().manual_seed(4))
    hits = find_massive_activations(model, tokens)
    assert [(h.layer, h.position, h.dim) for h in hits] == [(0, 5, 7), (1, 5, 7)]
    assert all(h.value > 2000 and h.ratio > 1000 and h.batch == 0 for h in hits)
    assert hits.median_exact and hits.positions() == [5] and hits.dims() == [7]
    # The ratio is |value| over the exact median |activation| of that layer's hidden state.
    _, cache = model.run_with_cache(tokens)
    for h in hits:
        resid = cache[f"blocks.{h.layer}.hook_resid_post"][0]
        assert h.value == pytest.approx(float(resid[5, 7]))
        assert h.ratio == pytest.approx(abs(h.value) / float(resid.abs().flatten().median()))
    # Per-position residual-norm view: the planted position stands out in every layer.
    assert hits.residual_norms.shape == (2, 30)
    assert hits.norm_ratio().argmax(dim=-1).tolist() == [5, 5]
    norms = hits.norms_dataframe()
    assert norms.loc[norms.n_massive > 0, "position"].tolist() == [5]
    # Both thresholds are configurable, and chunking (histogram median) finds the same hits.
    assert len(find_massive_activations(model, tokens, thresholds=SinkThresholds(min_value=3000))) == 0
    assert len(find_massive_activations(model, tokens, thresholds=SinkThresholds(min_ratio=1e9))) == 0
    chunked = find_massive_activations(model, tokens, thresholds=SinkThresholds(chunk_size=8))
    assert not chunked.median_exact
    assert [(h.layer, h.position, h.dim) for h in chunked] == [(0, 5, 7), (1, 5, 7)]
    for a, b in zip(chunked, hits):
        assert a.value == pytest.approx(b.value, rel=1e-5) and a.ratio == pytest.approx(b.ratio, rel=2e-3)
    assert len(find_massive_activations(tiny_model(seed=3, n_ctx=64), tokens)) == 0


# --- memory bound -------------------------------------------------------------------------------------------------
def test_memory_bound_on_long_input() -> None:
    """On 1024 tokens with 64-query chunks no layer materialises more than [batch, heads, 64, seq] attention and
    the hooks keep O(layers x heads x seq), while run_with_cache would hold layers x heads x seq^2."""
    model = tiny_model(seed=5)
    seq, chunk = 1024, 64
    tokens = torch.randint(0, 64, (1, seq), generator=torch.Generator().manual_seed(5))
    result = scan_sinks(model, tokens, thresholds=SinkThresholds(chunk_size=chunk), massive=True)
    n_layers, n_heads, d_model = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model
    assert result.max_pattern_numel == n_heads * chunk * seq
    full_cache_numel = n_layers * n_heads * seq * seq
    # kept: alpha sums (layers*heads*seq) + validity (seq) + norms (layers*seq) + histograms (layers*bins)
    # (+ the capacity slack of the growable buffers, at most 2x).
    from r1_plugin.sinks._scan import HIST_BINS

    bound = 2 * (n_layers * n_heads * seq + seq + n_layers * seq) + n_layers * HIST_BINS + n_layers
    assert result.kept_numel <= bound
    assert result.kept_numel * 16 < full_cache_numel
    del d_model
    # ... and the chunked result is the one-forward result.
    single = find_attention_sinks(model, tokens, SinkThresholds(chunk_size=None))
    assert result.sinks is not None
    torch.testing.assert_close(result.sinks.alpha, single.alpha, rtol=0, atol=1e-6)


# --- generation tracker -------------------------------------------------------------------------------------------
def test_generation_tracker_equals_one_shot_detector() -> None:
    # Rotary, like every R1 model (TL 3.9 generate mis-positions "standard" positional embeddings under the KV
    # cache when it has no attention mask: W_pos is indexed from the cache length for the whole sequence).
    model = tiny_model(seed=6, n_ctx=64, dtype=torch.float64, positional_embedding_type="rotary")
    prompt = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(6))
    tracker = SinkMonitor(model, SinkThresholds(epsilon=0.1, min_queries=2))
    with tracker:
        out = model.generate(prompt, max_new_tokens=15, do_sample=False, use_past_kv_cache=True,
                             stop_at_eos=False, verbose=False)
    assert out.shape == (2, 24) and tracker.n_positions == 23  # generate never runs its last sampled token
    tracked = tracker.report(out)
    one_shot = scan_sinks(model, out[:, :-1], thresholds=SinkThresholds(epsilon=0.1, min_queries=2))
    assert one_shot.sinks is not None and one_shot.massive is not None
    torch.testing.assert_close(tracked.alpha, one_shot.sinks.alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(tracked.sink_rate, one_shot.sinks.sink_rate, rtol=0, atol=0)
    assert tracked.sink_positions == one_shot.sinks.sink_positions
    torch.testing.assert_close(tracked.tokens, out[:, :-1])
    massive = tracker.massive_activations(out)
    torch.testing.assert_close(massive.residual_norms, one_shot.massive.residual_norms, rtol=0, atol=1e-10)
    # The generate wrapper: fresh state per call, same numbers.
    out2 = SinkMonitor(model).generate(prompt, max_new_tokens=15, do_sample=False, stop_at_eos=False)
    torch.testing.assert_close(out2, out)


def test_tracker_refuses_generation_without_kv_cache() -> None:
    model = tiny_model(seed=6, n_ctx=64)
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(7))
    with pytest.raises(SinkDetectionError, match="use_past_kv_cache"):
        with SinkMonitor(model):
            model.generate(prompt, max_new_tokens=3, use_past_kv_cache=False, verbose=False, stop_at_eos=False)
    with pytest.raises(SinkDetectionError, match="use_past_kv_cache"):
        SinkMonitor(model).generate(prompt, max_new_tokens=3, use_past_kv_cache=False)


def test_clear_errors() -> None:
    model = tiny_model()
    with pytest.raises(SinkDetectionError, match="integer ids"):
        find_attention_sinks(model, torch.zeros(3, 4, 5, dtype=torch.long))
    with pytest.raises(SinkDetectionError, match="attention_mask shape"):
        find_attention_sinks(model, torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(SinkDetectionError, match="chunk_size"):
        find_attention_sinks(model, torch.zeros(1, 5, dtype=torch.long), SinkThresholds(chunk_size=0))
    with pytest.raises(SinkDetectionError, match="epsilon"):
        find_attention_sinks(model, torch.zeros(1, 5, dtype=torch.long), SinkThresholds(epsilon=2.0))
    with pytest.raises(SinkDetectionError, match="hook_pattern"):
        find_attention_sinks(type("NotHooked", (), {"hook_dict": {}, "cfg": model.cfg})(), torch.zeros(1, 5).long())


# --- thresholds: one definition ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "bad", "words"), [
    ("epsilon", -1.0, "between 0 and 1"), ("epsilon", float("nan"), "finite"), ("epsilon", 1.5, "between 0 and 1"),
    ("min_sink_rate", float("inf"), "finite"), ("min_sink_rate", -0.1, "between 0 and 1"),
    ("min_queries", 0, ">= 1"), ("min_queries", 2.5, "integer"), ("min_value", -1.0, ">= 0"),
    ("min_value", float("nan"), "finite"), ("min_ratio", float("-inf"), "finite"), ("chunk_size", 0, ">= 1"),
    ("chunk_size", True, "integer"),
])
def test_thresholds_refuse_values_that_cannot_work(field: str, bad: object, words: str) -> None:
    """Each field is checked once, in SinkThresholds; the error is a SinkDetectionError and an InvalidValueError."""
    from r1_plugin.values import InvalidValueError

    with pytest.raises(SinkThresholdError, match=f"{field}.*{words}") as info:
        SinkThresholds(**{field: bad})
    assert isinstance(info.value, SinkDetectionError) and isinstance(info.value, InvalidValueError)


def test_thresholds_are_frozen_and_typed() -> None:
    th = SinkThresholds(epsilon=1, min_value=0, chunk_size=None)
    assert th.epsilon == 1.0 and isinstance(th.epsilon, float) and th.min_value == 0.0 and th.chunk_size is None
    with pytest.raises(AttributeError):
        th.epsilon = 0.5  # type: ignore[misc]
    assert th.replace(min_queries=3) == SinkThresholds(epsilon=1.0, min_value=0.0, chunk_size=None, min_queries=3)
    with pytest.raises(SinkThresholdError):
        th.replace(min_queries=-3)


def test_old_threshold_keywords_warn_and_give_the_same_numbers() -> None:
    """epsilon=, min_queries=, ... (and find_attention_sinks' positional epsilon) still work for one release."""
    model = tiny_model(seed=3)
    tokens = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(3))
    new = find_attention_sinks(model, tokens, SinkThresholds(epsilon=0.05, min_queries=3, chunk_size=7))
    with pytest.warns(DeprecationWarning, match=r"thresholds=SinkThresholds\(epsilon=0.05"):
        old = find_attention_sinks(model, tokens, epsilon=0.05, min_queries=3, chunk_size=7)
    with pytest.warns(DeprecationWarning):
        positional = find_attention_sinks(model, tokens, 0.05, min_queries=3, chunk_size=7)
    for report in (old, positional):
        torch.testing.assert_close(report.sink_rate, new.sink_rate, rtol=0, atol=0)
        assert report.sink_positions == new.sink_positions and report.epsilon == 0.05 and report.min_queries == 3
    with pytest.warns(DeprecationWarning):
        massive = find_massive_activations(model, tokens, min_value=0.5)
    assert massive.min_value == 0.5
    with pytest.warns(DeprecationWarning):
        assert SinkMonitor(model, min_ratio=5).thresholds == SinkThresholds(min_ratio=5.0)
    with pytest.raises(TypeError, match="epsilonn"):
        scan_sinks(model, tokens, epsilonn=0.3)
    with pytest.warns(DeprecationWarning), pytest.raises(SinkDetectionError, match="epsilon"):
        scan_sinks(model, tokens, epsilon=float("nan"))


def test_sink_tracker_is_the_old_name_of_sink_monitor() -> None:
    import r1_plugin.sinks as sinks_pkg
    from r1_plugin.sinks import tracker

    with pytest.warns(DeprecationWarning, match="SinkMonitor"):
        assert sinks_pkg.SinkTracker is SinkMonitor
    with pytest.warns(DeprecationWarning, match="SinkMonitor"):
        from r1_plugin.sinks import SinkTracker  # noqa: F401
    with pytest.warns(DeprecationWarning, match="SinkMonitor"):
        assert tracker.SinkTracker is SinkMonitor
    assert "SinkTracker" not in sinks_pkg.__all__
