"""One SteeringSpec validated once; non-finite strengths refused where they enter; closed positions untouched even
when the edit overflows; sampling temperature checked by the driver."""

from __future__ import annotations

import math

import pytest
import torch

from r1_plugin.steering import AddDirection, SteeringSpec, SteeringSpecError, steer
from r1_plugin.steering.spec import check_strength
from r1_plugin.values import InvalidValueError


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, [1.0, math.nan], torch.tensor([1.0, math.inf]), "2"])
def test_non_finite_strength_is_refused(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="finite"):
        check_strength(bad)
    if not isinstance(bad, str):
        with pytest.raises(InvalidValueError, match="finite"):
            AddDirection(torch.ones(4), bad)  # type: ignore[arg-type]


def test_closed_positions_stay_exact_when_the_edit_overflows() -> None:
    act = torch.randn(2, 5, 4, dtype=torch.float16)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 3:] = True
    out = AddDirection(torch.full((4,), 2.0), 6.0e4)  # strength x direction = 1.2e5: inf in float16
    big = out.apply(act * 0 + 6.0e4, mask)
    assert torch.isinf(big[:, 3:]).all()
    assert torch.equal(big[:, :3], (act * 0 + 6.0e4)[:, :3]), "a closed position must never become NaN"
    relative = AddDirection(torch.ones(4), 2.0, relative=True).apply(act, mask)
    assert torch.equal(relative[:, :3], act[:, :3])


def test_spec_is_validated_once_and_refuses_mixed_use() -> None:
    with pytest.raises(SteeringSpecError, match="exactly one"):
        SteeringSpec()
    with pytest.raises(SteeringSpecError, match="hook_name"):
        SteeringSpec(direction=torch.ones(4))
    with pytest.raises(SteeringSpecError, match="mode"):
        SteeringSpec(direction=torch.ones(4), hook_name="blocks.0.hook_resid_post", mode="scale")
    spec = SteeringSpec(direction=torch.ones(4), hook_name="blocks.0.hook_resid_post")
    assert spec.steer_kwargs()["hook_name"] == "blocks.0.hook_resid_post"
    with pytest.raises(SteeringSpecError, match="not both"):
        with steer(_tiny(), spec=spec, hook_name="blocks.0.hook_resid_post"):
            pass
    with pytest.raises(InvalidValueError, match="finite"):
        with steer(_tiny(), spec=spec, strength=math.nan):
            pass


def _tiny() -> object:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=4, n_ctx=8, d_head=2, n_heads=2, d_vocab=10, act_fn="relu")
    return HookedTransformer(cfg)


def test_sampling_needs_a_positive_temperature() -> None:
    from r1_plugin.drive import driver

    model = _tiny()
    with pytest.raises(InvalidValueError, match="temperature"):
        driver(model).generate(torch.tensor([[1, 2]]), 2, do_sample=True, temperature=0.0)
    with pytest.raises(InvalidValueError, match="temperature"):
        driver(model).generate(torch.tensor([[1, 2]]), 2, do_sample=True, temperature=math.nan)
    out = driver(model).generate(torch.tensor([[1, 2]]), 2, stop_at_eos=False)
    assert out.shape == (1, 4)


def test_a_spec_plus_keywords_is_refused_everywhere_even_with_a_tensor_direction() -> None:
    from r1_plugin.experiments import ExperimentError
    from r1_plugin.experiments.base import steering_spec
    from r1_plugin.steering.spec import keywords_given

    spec = SteeringSpec(direction=torch.ones(4), hook_name="blocks.0.hook_resid_post")
    assert keywords_given(direction=torch.ones(4), mode="add", normalize=False) == ["direction"]
    assert keywords_given(sae=None, mode="add", relative=False) == []
    with pytest.raises(ExperimentError, match="not both"):
        steering_spec(spec, direction=torch.ones(4))
    assert steering_spec(spec, direction=None, mode="add") is spec
    with pytest.raises(SteeringSpecError, match="not both"):
        with steer(_tiny(), spec=spec, direction=torch.ones(4)):
            pass
