"""README.md runs as written: its Python example and its shell commands, on a tiny FP8 R1 with 38 layers, a tiny
Goodfire logic SAE at layer 37 and a tiny feature database, all under the real names and paths. The only
substitutions are the hardware (8 GPUs -> this CPU) and the number of generated tokens."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from r1_plugin.cli import build_parser, main
from r1_plugin.features import FeatureDB
from r1_plugin.steering import GateNeverOpenedWarning
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint
from r1_plugin.testing.feature_db import build_tiny_feature_db
from r1_plugin.testing.sae_fixtures import random_goodfire_state_dict, write_goodfire_r1_repo

README = Path(__file__).resolve().parents[1] / "README.md"
HARDWARE = {"n_devices=8": "n_devices=1", 'device="cuda:7"': 'device="cpu"', "max_new_tokens=256": "max_new_tokens=2"}
SHELL_HARDWARE = {"--n-devices 8": "--n-devices 1", "--sae-device cuda:7": "--sae-device cpu"}
D_SAE = 64


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def shell_commands() -> list[str]:
    """Every `r1-plugin ...` command of the README's bash blocks, continuation lines joined."""
    lines = "\n".join(blocks("bash")).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("r1-plugin ")]


@pytest.fixture
def r1_world(hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny R1 (FP8 shards, 38 layers) and Goodfire logic SAE in the HF cache; `logic/` as `features download`
    lays it out, in the working directory."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    write_tiny_checkpoint("deepseek-ai/DeepSeek-R1", tiny_config(num_hidden_layers=38), storage="fp8", seed=3)
    lookup = get_pretrained_saes_directory()["goodfire-deepseek-r1-logic"]
    d_model = tiny_config()["hidden_size"]
    monkeypatch.setattr(lookup, "config_overrides", {**lookup.config_overrides, "d_in": d_model, "d_sae": D_SAE})
    write_goodfire_r1_repo({"logic": random_goodfire_state_dict(d_model, D_SAE, torch.float32, seed=4)})
    tiny = build_tiny_feature_db(tmp_path / "logic", label_format="sqlite")
    tiny.activations_path.rename(tmp_path / "logic" / "logic-1.ddb")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_python_example_runs_as_written(r1_world: Path) -> None:
    (code,) = blocks("python")
    for real, here in HARDWARE.items():
        assert code.count(real) == 1, f"README example changed: {real!r} not found once; update this test"
        code = code.replace(real, here)
    namespace: dict[str, Any] = {}
    torch.manual_seed(0)  # the example samples (TransformerLens's default); the check below replays it
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", GateNeverOpenedWarning)  # a random tiny model may never end its prefix
        exec(compile(code, str(README), "exec"), namespace)
    model, tokens, out, result = (namespace[k] for k in ("model", "tokens", "out", "result"))
    with FeatureDB(labels="logic/autointerp.db") as db:
        assert namespace["feature"] == db.search("backtracking")[0].feature_id
    assert model.cfg.n_layers == 38 and model.cfg.dtype == torch.bfloat16
    assert namespace["sae"].cfg.metadata.hook_name == "blocks.37.hook_resid_post" and result.hook_name == (
        "blocks.37.hook_resid_post"
    )
    assert out.shape == (1, tokens.shape[1] + 2) and torch.equal(out[:, : tokens.shape[1]], tokens)
    torch.manual_seed(0)
    with torch.no_grad():
        plain = model.generate(tokens, max_new_tokens=2, use_past_kv_cache=True, verbose=False)
    if result.open_at[0] is None or result.open_at[0] >= out.shape[1] - 1:
        assert torch.equal(out, plain)  # nothing (or only the last token's successor) was steered


def test_every_shell_command_parses_and_the_model_commands_run(r1_world: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    commands = shell_commands()
    names = {" ".join(shlex.split(c)[1:3]) for c in commands}
    assert {"features download", "features search", "saes list", "models"} <= names
    assert any(c.startswith("r1-plugin steer") for c in commands) and any(c.startswith("r1-plugin sinks")
                                                                        for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[:2] == ["features", "download"]:  # needs the network: parse it only
            build_parser().parse_args(argv)
            continue
        for real, here in SHELL_HARDWARE.items():
            command = command.replace(real, here)
        argv = shlex.split(command)[1:]
        if argv[0] in ("steer", "sinks"):
            argv += ["--max-new-tokens", "2", "--no-wandb"]
        assert main(argv) == 0, f"{command}\n{capsys.readouterr().err}"
    out = capsys.readouterr().out
    assert "steered" in out and "sink" in out and "goodfire-deepseek-r1-logic" in out
