"""`--backend bridge` on the model-loading CLI commands and the demo: the model is booted as a TransformerBridge
and the commands print what they print for the HookedTransformer (tiny Qwen distill). SAELens-free."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from r1_plugin.cli import build_parser, main
from r1_plugin.cli._model_args import load_model_from_args
from r1_plugin.drive import DEFAULT_BACKEND, driver, hooked_transformer_available
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

pytestmark = pytest.mark.bridge

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"


NEEDS_HOOKED = pytest.mark.skipif(not hooked_transformer_available(),
                                  reason="compares with HookedTransformer, which TransformerLens 4 removed")


def test_backend_flag_defaults_to_hooked_and_boots_a_bridge(hf_cache: Any) -> None:
    write_tiny_distill(QWEN, seed=0)
    parser = build_parser()
    args = parser.parse_args(["sinks", "--model", QWEN, "--prompt", "Hi", "--device", "cpu"])
    assert args.backend == DEFAULT_BACKEND == ("hooked" if hooked_transformer_available() else "bridge")
    args = parser.parse_args(["sinks", "--model", QWEN, "--prompt", "Hi", "--device", "cpu", "--backend", "bridge"])
    model = load_model_from_args(args)
    assert driver(model).kind == "bridge" and type(model).__name__ == "TransformerBridge"
    with pytest.raises(SystemExit):
        parser.parse_args(["sinks", "--model", QWEN, "--prompt", "Hi", "--backend", "vllm"])


def test_first_n_layers_on_the_bridge_is_a_one_line_error(hf_cache: Any, capsys: pytest.CaptureFixture[str]) -> None:
    write_tiny_distill(QWEN, seed=0)
    capsys.readouterr()
    assert main(["sinks", "--model", QWEN, "--prompt", "Hi", "--backend", "bridge", "--first-n-layers", "1",
                 "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "first_n_layers" in err and "backend" in err and len(err.splitlines()) == 1


def test_hooked_backend_on_transformer_lens_4_is_a_one_line_error(
    hf_cache: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import r1_plugin.drive as drive

    write_tiny_distill(QWEN, seed=0)
    monkeypatch.setattr(drive, "hooked_transformer_available", lambda: False)  # as under TransformerLens 4
    capsys.readouterr()
    assert main(["sinks", "--model", QWEN, "--prompt", "Hi", "--backend", "hooked", "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "TransformerLens 4" in err and "--backend bridge" in err and len(err.splitlines()) == 1


@NEEDS_HOOKED
def test_sinks_and_steer_print_the_same_on_both_backends(hf_cache: Any, tmp_path: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_tiny_distill(QWEN, seed=0)
    path = tmp_path / "vec.pt"
    torch.save(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3, path)
    for command in (["sinks", "--prompt", "What is 7 times 8?", "--max-new-tokens", "4"],
                    ["steer", "--prompt", "Hi", "--direction", str(path), "--hook", "blocks.1.hook_resid_post",
                     "--strength", "4", "--gate", "generated", "--max-new-tokens", "4"]):
        outputs = []
        for backend in ("hooked", "bridge"):
            assert main([*command, "--model", QWEN, "--device", "cpu", "--no-wandb", "--backend", backend]) == 0
            out = capsys.readouterr().out
            outputs.append([line for line in out.splitlines() if not line.startswith("Loaded pretrained model")])
        assert outputs[0] == outputs[1], command[0]
