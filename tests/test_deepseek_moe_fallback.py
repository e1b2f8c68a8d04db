"""The MoE grouped-matmul fast path falls back narrowly (issue #21): out-of-memory and unknown errors propagate; a
device with no kernel is warned about once; a layout grouped_mm refuses takes the loop for that call only."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

from r1_plugin.models.deepseek_v3 import moe


def reference(x: torch.Tensor, weight: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Row block g of x times weight[g], written out."""
    blocks = torch.split(x, counts)
    return torch.cat([block @ weight[g] for g, block in enumerate(blocks)])


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moe, "_GROUPED_MM_UNSUPPORTED", set())
    monkeypatch.setattr(moe, "_LAYOUTS_REPORTED", set())


def inputs(cols: int = 8) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    counts = [10, 0, 14, 16]
    x = torch.randn(sum(counts), 16, generator=gen)
    weight = torch.randn(4, 16, cols, generator=gen)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    return x, weight, counts, offsets


class Raising:
    """Stands in for F.grouped_mm: raises `error` and counts its calls."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.calls = error, 0

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), TypeError("bad call")])
def test_other_errors_propagate_and_keep_the_fast_path(
    fresh_state: None, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    fake = Raising(error)
    monkeypatch.setattr(F, "grouped_mm", fake)
    x, weight, counts, offsets = inputs()
    for _ in range(2):
        with pytest.raises(type(error), match=str(error)[:10]):
            moe.grouped_matmul(x, weight, counts, offsets)
    assert fake.calls == 2 and not moe._GROUPED_MM_UNSUPPORTED  # an OOM never turns the fast path off


def test_missing_kernel_is_warned_once_and_the_loop_is_exact(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Raising(NotImplementedError("Could not run 'aten::_grouped_mm' with arguments from the 'XLA' backend"))
    monkeypatch.setattr(F, "grouped_mm", fake)
    x, weight, counts, offsets = inputs()
    with pytest.warns(RuntimeWarning, match="grouped_mm has no kernel for cpu.*one matmul per expert"):
        first = moe.grouped_matmul(x, weight, counts, offsets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        second = moe.grouped_matmul(x, weight, counts, offsets)
    assert fake.calls == 1  # not tried again on this device
    torch.testing.assert_close(first, reference(x, weight, counts), rtol=1e-6, atol=1e-6)
    assert torch.equal(first, second)


def test_refused_layout_takes_the_loop_for_that_call_only(
    fresh_state: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if getattr(F, "grouped_mm", None) is None:
        pytest.skip("this torch has no grouped_mm")
    x, odd, counts, offsets = inputs(cols=6)  # rows of 6 float32 = 24 bytes: not 16-byte aligned
    with caplog.at_level(logging.INFO, logger=moe.__name__):
        out = moe.grouped_matmul(x, odd, counts, offsets)
        moe.grouped_matmul(x, odd, counts, offsets)
    torch.testing.assert_close(out, reference(x, odd, counts), rtol=1e-5, atol=1e-5)
    said = [r for r in caplog.records if "refused the layout" in r.getMessage()]
    assert len(said) == 1 and "strides should be multiple of 16 bytes" in said[0].getMessage()
    calls: list[int] = []
    real = F.grouped_mm

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "grouped_mm", counting)
    x, aligned, counts, offsets = inputs(cols=8)
    torch.testing.assert_close(moe.grouped_matmul(x, aligned, counts, offsets), reference(x, aligned, counts),
                               rtol=1e-5, atol=1e-5)
    assert calls == [1] and not moe._GROUPED_MM_UNSUPPORTED  # the fast path still serves aligned layouts


def test_float64_skips_grouped_mm_without_trying(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Raising(AssertionError("grouped_mm called for float64"))
    monkeypatch.setattr(F, "grouped_mm", fake)
    x, weight, counts, offsets = inputs()
    out = moe.grouped_matmul(x.double(), weight.double(), counts, offsets)
    torch.testing.assert_close(out, reference(x.double(), weight.double(), counts), rtol=0, atol=1e-12)
    assert fake.calls == 0
