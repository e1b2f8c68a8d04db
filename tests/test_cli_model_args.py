"""The model-loading flags every model-loading command shares (r1_plugin/cli/_model_args.py): each flag reaches
`from_pretrained` under the keyword of the same name, only when given, and loads the same model as Python does."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer

from r1_plugin.cli import build_parser
from r1_plugin.cli._model_args import (
    ModelArgsError,
    add_model_args,
    hook_device,
    load_model_from_args,
    model_kwargs_from_args,
)
from r1_plugin.testing.distill_checkpoints import write_tiny_distill

QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
FLAGS = ["--dtype", "bfloat16", "--device", "cuda", "--n-devices", "2", "--first-n-layers", "38", "--keep-fp8"]
LOADING = ("steer", "sinks")  # every command that loads a model (and `features harvest`, tested below)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    return parser.parse_args(list(argv))


def test_flags_map_to_the_from_pretrained_keywords_only_when_given() -> None:
    args = parse("--model", "m", *FLAGS)
    assert model_kwargs_from_args(args) == dict(
        dtype="bfloat16", device="cuda", n_devices=2, first_n_layers=38, keep_fp8=True
    )
    assert model_kwargs_from_args(parse("--model", "m")) == {}  # TransformerLens's own defaults apply
    for bad in (["--n-devices", "0"], ["--first-n-layers", "-1"], ["--dtype", "fp64"], ["--n-devices", "two"]):
        with pytest.raises(SystemExit):
            parse("--model", "m", *bad)


@pytest.mark.parametrize("command", LOADING)
def test_every_model_loading_command_passes_the_flags_to_from_pretrained(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed by the real `r1-plugin` parser and loaded by the real loader, up to from_pretrained itself."""
    seen: dict[str, Any] = {}

    def fake_loader(cls: Any, name: str, **kwargs: Any) -> Any:
        seen.update(name=name, **kwargs)
        raise KeyboardInterrupt  # stop before any weight is read

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", classmethod(fake_loader))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a 2-GPU machine, as far as the check sees
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    extra = ["--direction", "d.pt"] if command == "steer" else []
    args = build_parser().parse_args([command, "--model", "deepseek-ai/DeepSeek-R1", "--prompt", "Hi", *FLAGS,
                                      *extra])
    with pytest.raises(KeyboardInterrupt):
        load_model_from_args(args)
    assert seen == dict(name="deepseek-ai/DeepSeek-R1", dtype="bfloat16", device="cuda", n_devices=2,
                        first_n_layers=38, keep_fp8=True)


def test_loaded_model_equals_the_python_call(hf_cache: Any) -> None:
    """`--dtype bfloat16 --first-n-layers 1 --device cpu` gives exactly `from_pretrained_no_processing(...)`."""
    write_tiny_distill(QWEN, seed=0)
    model = load_model_from_args(parse("--model", QWEN, "--dtype", "bfloat16", "--first-n-layers", "1",
                                       "--device", "cpu"))
    ref = HookedTransformer.from_pretrained_no_processing(QWEN, dtype="bfloat16", first_n_layers=1, device="cpu")
    assert model.cfg.n_layers == 1 and model.cfg.dtype == torch.bfloat16
    state, ref_state = model.state_dict(), ref.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in state)
    assert hook_device(model, "blocks.0.hook_resid_post") == torch.device("cpu")
    assert hook_device(model, "hook_embed") == torch.device("cpu")


def test_keep_fp8_loads_what_the_python_keyword_loads(hf_cache: Any) -> None:
    """`--keep-fp8 --dtype bfloat16 --first-n-layers 2` on an FP8 R1 checkpoint: the same logits as
    `from_pretrained_no_processing(..., keep_fp8=True, dtype="bfloat16", first_n_layers=2)`."""
    from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint

    name = "deepseek-ai/DeepSeek-R1"
    write_tiny_checkpoint(name, tiny_config(num_hidden_layers=3), storage="fp8", seed=1)
    model = load_model_from_args(parse("--model", name, "--keep-fp8", "--dtype", "bfloat16", "--first-n-layers",
                                       "2", "--device", "cpu"))
    ref = HookedTransformer.from_pretrained_no_processing(name, keep_fp8=True, dtype="bfloat16", first_n_layers=2,
                                                          device="cpu")
    tokens = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(model(tokens), ref(tokens))
    assert model.cfg.n_layers == 2 and model.cfg.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "gpu0"], "is not a torch device"),
        (["--device", "cuda:3"], "this machine has 0 CUDA device"),
        (["--n-devices", "2"], "this machine has 0 CUDA device"),
        (["--n-devices", "2", "--device", "cpu"], "splits the model over CUDA devices"),
        (["--sae-device", "cuda:1"], "--sae-device cuda:1"),
    ],
)
def test_devices_this_machine_lacks_are_refused_before_loading(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing",
                        classmethod(lambda cls, *a, **k: pytest.fail("loaded despite a bad device")))
    with pytest.raises(ModelArgsError, match=message):
        load_model_from_args(parse("--model", QWEN, *argv))


MODEL_FLAGS = ("--model", "--dtype", "--device", "--n-devices", "--first-n-layers", "--keep-fp8",
               "--memory-per-device", "--backend", "--sae-device", "--sae-dtype")


def _model_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings if opt in MODEL_FLAGS}


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_one_definition_of_the_model_flags_for_every_command_and_the_demo() -> None:
    """steer, sinks, features harvest, the four experiments, models plan and the demo declare the model flags
    through add_model_args: the same type, choices and help (the demo's defaults are its own: cpu, float32)."""
    from r1_plugin.demo.run import build_parser as demo_parser

    reference = _model_actions(_subparser(build_parser("steer"), "steer"))
    assert set(reference) == set(MODEL_FLAGS)
    parsers = {
        "sinks": _subparser(build_parser("sinks"), "sinks"),
        "features harvest": _subparser(build_parser("features"), "features", "harvest"),
        **{f"experiment {n}": _subparser(build_parser("experiment"), "experiment", n)
           for n in ("prefix-gating", "oversteer", "segments", "sinks")},
        "models plan": _subparser(build_parser("models"), "models", "plan"),
        "demo": demo_parser(),
    }
    for name, parser in parsers.items():
        actions = _model_actions(parser)
        assert actions, name
        for flag, action in actions.items():
            ref = reference[flag]
            assert (action.type, action.choices, action.nargs) == (ref.type, ref.choices, ref.nargs), (name, flag)
            if flag != "--model" and not (name == "demo" and flag in ("--device", "--dtype")):
                assert action.help == ref.help, (name, flag)  # the demo's help states its own defaults
    assert "--device" not in _model_actions(parsers["models plan"])  # a plan places nothing
    demo = demo_parser().parse_args([])
    assert (demo.device, demo.dtype, demo.n_devices, demo.memory_per_device) == ("cpu", "float32", None, None)


def test_memory_per_device_is_the_python_keyword() -> None:
    """--memory-per-device reaches from_pretrained as memory_per_device (bytes), as plan_devices takes it."""
    args = parse("--model", "m", "--memory-per-device", "80GiB")
    assert model_kwargs_from_args(args) == dict(memory_per_device=80 * 2**30)
    for bad in ("0", "-1GB", "lots", "nan"):
        with pytest.raises(SystemExit):
            parse("--model", "m", "--memory-per-device", bad)
