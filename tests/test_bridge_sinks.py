"""Sink detection on a TransformerBridge equals brute force over its own `hook_pattern`s (one shot, chunked over
the KV cache, left-padded) and the HookedTransformer from the same weights; the generation tracker equals the
one-shot scan. R1 architecture and both distill families. SAELens-free (runs under TransformerLens 4 too)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bridge_models import FAMILIES, load_pair
from sink_oracle import alpha_from_patterns

from r1_plugin.drive import driver
from r1_plugin.sinks import SinkMonitor, SinkThresholds, find_attention_sinks, scan_sinks

pytestmark = pytest.mark.bridge


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest, hf_cache: Any) -> tuple[str, Any, Any]:
    hooked, bridge = load_pair(request.param)
    return request.param, hooked, bridge


def brute_force_alpha(model: Any, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """alpha [batch, layer, head, seq] straight from the full patterns of one forward, looping over keys."""
    names = driver(model).pattern_hook_names()
    patterns: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Any:
        def hook(pattern: torch.Tensor, hook: Any) -> None:
            patterns[layer] = pattern.detach().double()

        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, keep(layer)) for layer, name in names.items()]):
        model(tokens, attention_mask=mask)
    return alpha_from_patterns(torch.stack([patterns[layer] for layer in sorted(names)], 1), mask)


def test_bridge_sinks_equal_brute_force_chunked_padded_and_hooked(pair: tuple[str, Any, Any]) -> None:
    family, hooked, bridge = pair
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    pad = bridge.tokenizer.pad_token_id
    tokens = torch.cat([ids, torch.cat([torch.full((1, 5), pad), ids[:, :15]], 1)])
    mask = torch.ones_like(tokens)
    mask[1, :5] = 0
    expected = brute_force_alpha(bridge, tokens, mask)
    for chunk in (None, 6):
        report = find_attention_sinks(bridge, tokens, attention_mask=mask, chunk_size=chunk)
        torch.testing.assert_close(report.alpha.nan_to_num(), expected.nan_to_num(), rtol=0, atol=1e-5)
        if hooked is not None:
            on_hooked = find_attention_sinks(hooked, tokens, attention_mask=mask, chunk_size=chunk)
            torch.testing.assert_close(report.alpha.nan_to_num(), on_hooked.alpha.nan_to_num(), rtol=0, atol=1e-4)
            assert report.sink_positions == on_hooked.sink_positions, family
    # the padded row's real positions equal the unpadded run of the same 15 tokens
    short = find_attention_sinks(bridge, ids[:, :15])
    torch.testing.assert_close(find_attention_sinks(bridge, tokens, attention_mask=mask).alpha[1, ..., 5:],
                               short.alpha, rtol=0, atol=1e-5)


def test_bridge_generation_tracker_equals_one_shot_scan(pair: tuple[str, Any, Any]) -> None:
    family, hooked, bridge = pair
    prompt = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(6))
    tracker = SinkMonitor(bridge, SinkThresholds(epsilon=0.1, min_queries=2))
    out = tracker.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False)
    assert out.shape == (2, 15) and tracker.n_positions == 14, family
    one_shot = scan_sinks(bridge, out[:, :-1], epsilon=0.1, min_queries=2)
    assert one_shot.sinks is not None and one_shot.massive is not None
    tracked = tracker.report(out)
    torch.testing.assert_close(tracked.alpha, one_shot.sinks.alpha, rtol=0, atol=1e-5)
    assert tracked.sink_positions == one_shot.sinks.sink_positions
    torch.testing.assert_close(tracker.massive_activations(out).residual_norms, one_shot.massive.residual_norms,
                               rtol=1e-5, atol=1e-5)
    if hooked is None:
        return
    on_hooked = SinkMonitor(hooked, SinkThresholds(epsilon=0.1, min_queries=2))
    assert torch.equal(on_hooked.generate(prompt, max_new_tokens=6, do_sample=False, stop_at_eos=False), out)
    torch.testing.assert_close(on_hooked.report().alpha, tracked.alpha, rtol=0, atol=1e-4)
