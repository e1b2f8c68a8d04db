"""The four findings experiments, the strength sweep and the demo's steered generation give the same results on a
TransformerBridge as on the HookedTransformer (the embedded tiny R1 and its SAE, both loaded as the demo loads
them; the HookedTransformer results are checked against their oracles in test_experiments.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from r1_plugin.drive import hooked_transformer_available
from r1_plugin.experiments import SteeringSpec, oversteer, prefix_gating, segments, sink_check
from r1_plugin.steering.sweep import sweep_strengths

# Each test compares the bridge with the HookedTransformer, which TransformerLens 4 removed.
pytestmark = [pytest.mark.bridge, pytest.mark.skipif(not hooked_transformer_available(),
                                                     reason="compares with HookedTransformer (TransformerLens 3.9)")]

PROMPTS = ["What is 7 + 8?", "Which is larger, 3 or 9?"]
FEATURE = 398  # the demo's "before backtracking" feature of the embedded SAE
STRENGTH = 21.0


@pytest.fixture(scope="module")
def both(hf_cache: Path) -> tuple[Any, Any, Any]:
    from r1_plugin.demo.run import DemoConfig, load_model, load_sae

    return load_model(DemoConfig()), load_model(DemoConfig(backend="bridge")), load_sae(DemoConfig())


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    """Equal columns; text and integers exactly, floats to 1e-4 (the two kinds differ by float rounding only)."""
    assert list(a.columns) == list(b.columns), what
    assert len(a) == len(b), what
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            pd.testing.assert_series_equal(x, y, check_exact=False, atol=1e-4, rtol=1e-4, obj=f"{what}.{column}")
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), f"{what}.{column}"


def test_prefix_gating_and_oversteer_equal_on_both(both: tuple[Any, Any, Any]) -> None:
    hooked, bridge, sae = both
    spec = SteeringSpec(sae=sae, feature=FEATURE)
    runs = [prefix_gating(m, PROMPTS, steering=spec, strength=STRENGTH, target_text="Wait", max_new_tokens=30,
                          n_boot=50, seed=1) for m in (hooked, bridge)]
    assert runs[0].table["open_at"].notna().any(), "some gate must open (else the test proves nothing)"
    assert_same_table(runs[0].table, runs[1].table, "prefix_gating")
    runs = [oversteer(m, PROMPTS[:1], steering=spec, strengths=[0.0, STRENGTH, 4 * STRENGTH], max_new_tokens=24,
                      n_boot=50) for m in (hooked, bridge)]
    assert_same_table(runs[0].table, runs[1].table, "oversteer")


def test_segments_and_sinks_equal_on_both(both: tuple[Any, Any, Any]) -> None:
    hooked, bridge, sae = both
    runs = [segments(m, PROMPTS, sae=sae, max_new_tokens=60) for m in (hooked, bridge)]
    assert_same_table(runs[0].table, runs[1].table, "segments")
    runs = [sink_check(m, PROMPTS, max_new_tokens=40) for m in (hooked, bridge)]
    assert_same_table(runs[0].table, runs[1].table, "sinks")


def test_sweep_and_demo_generation_equal_on_both(both: tuple[Any, Any, Any]) -> None:
    from r1_plugin.demo.run import steered_generation
    from r1_plugin.drive import driver

    hooked, bridge, sae = both
    runs = [sweep_strengths(m, PROMPTS[0], [0.5 * STRENGTH, STRENGTH], spec=SteeringSpec(sae=sae, feature=FEATURE),
                            max_new_tokens=24) for m in (hooked, bridge)]
    assert runs[0].table["gate_open_at"].notna().all()
    assert_same_table(runs[0].table, runs[1].table, "sweep")
    tokens = driver(hooked).prompt_tokens(PROMPTS[0])
    (a, gate_a), (b, gate_b) = (steered_generation(m, sae, FEATURE, STRENGTH, tokens, 30) for m in (hooked, bridge))
    assert gate_a == gate_b and gate_a is not None
    assert a.tolist() == b.tolist()


def test_the_demo_on_the_bridge_gives_the_hooked_demo_results(hf_cache: Path, tmp_path: Path) -> None:
    """`python -m r1_plugin.demo --backend bridge`: the same feature, generations, gate positions and sink check."""
    from r1_plugin.demo.run import DemoConfig, build_parser, config_from_args, run_demo

    assert config_from_args(build_parser().parse_args(["--backend", "bridge"])).backend == "bridge"
    results = [run_demo(DemoConfig(prompts=PROMPTS[:1], out=tmp_path / backend, wandb_dir=tmp_path / "wb",
                                   max_new_tokens=40, sweep=False, experiments=False, backend=backend),
                        log=lambda _: None) for backend in ("hooked", "bridge")]
    hooked, bridge = results
    assert (hooked.feature_id, hooked.strength) == (bridge.feature_id, bridge.strength)
    assert hooked.generations == bridge.generations
    assert hooked.generations[0]["gate_position"] is not None
    assert_close_values(hooked.sinks, bridge.sinks, "sinks")


def assert_close_values(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists equal, floats to 1e-4."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_close_values(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_values(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float) and abs(a - b) <= 1e-4 * max(1.0, abs(a)), where
    else:
        assert a == b, where
