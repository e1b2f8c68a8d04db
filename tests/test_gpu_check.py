"""benchmarks/gpu_check.py runs end to end with --dry-run (tiny dimensions, CPU): both modes agree, FP8 is smaller."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--dry-run", "--decode-steps", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert summary["dry_run"] and summary["moe_layers"] == 2
    assert summary["max_abs_logit_diff"] < 1e-5  # float32: keep_fp8 and dequantise-on-load agree
    kept, plain = summary["results"]["keep_fp8"], summary["results"]["dequantised"]
    assert kept["resident_bytes_per_moe_layer"] <= 0.30 * plain["resident_bytes_per_moe_layer"]
    for r in (kept, plain):
        assert r["prefill_tokens_per_s"] > 0 and r["decode_b8_tokens_per_s"] > 0
        assert "steer_decode_overhead" in r and "sae_clamp_decode_overhead" in r
    rows = {(r["model"], r["gpus"], r["mode"]): r for r in summary["extrapolation"]}
    assert len(rows) == 8
    assert rows[("R1", "8xH200", "keep_fp8")]["fits"] and not rows[("R1", "8xH200", "dequantised")]["fits"]
    assert rows[("R1[:38]", "8xH200", "keep_fp8")]["fits"]
    assert "extrapolation" in out and "max |logit diff|" in out
