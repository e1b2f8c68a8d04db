"""Goodfire's R1 SAE on SAELens's SAETransformerBridge: `SAE.from_pretrained("goodfire-deepseek-r1-logic",
"layer_37")`, `add_sae` / `run_with_saes` and steering by SAE feature give the same numbers as the
HookedSAETransformer R1 built from the same weights (a tiny 38-layer R1, float32), and the README's example runs
as written on the bridge. Uses SAELens: not part of `make compat-tl4`."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from r1_plugin.steering import AfterResponsePrefix, GateNeverOpenedWarning, steer
from r1_plugin.testing.deepseek_checkpoints import tiny_config, write_tiny_checkpoint
from r1_plugin.testing.sae_fixtures import random_goodfire_state_dict, write_goodfire_r1_repo

pytestmark = pytest.mark.bridge

README = Path(__file__).resolve().parents[1] / "README.md"
D_SAE = 64
HOOK = "blocks.37.hook_resid_post"


@pytest.fixture(scope="module")
def world(hf_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A float32 38-layer tiny R1 folder, loaded both ways, and Goodfire's logic SAE (tiny) in the HF cache."""
    from sae_lens import SAE, HookedSAETransformer
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    folder = tmp_path_factory.mktemp("tiny_r1_38")
    write_tiny_checkpoint(config=tiny_config(num_hidden_layers=38), folder=folder, seed=3)
    lookup = get_pretrained_saes_directory()["goodfire-deepseek-r1-logic"]
    d_model = tiny_config()["hidden_size"]
    saved = lookup.config_overrides
    lookup.config_overrides = {**saved, "d_in": d_model, "d_sae": D_SAE}
    try:
        write_goodfire_r1_repo({"logic": random_goodfire_state_dict(d_model, D_SAE, torch.float32, seed=4)})
        sae = SAE.from_pretrained("goodfire-deepseek-r1-logic", "layer_37", device="cpu")
    finally:
        lookup.config_overrides = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = HookedSAETransformer.from_pretrained_no_processing(str(folder), device="cpu", dtype=torch.float32)
        bridge = SAETransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    return {"folder": folder, "sae": sae, "hooked": hooked, "bridge": bridge}


def _tokens(model: Any) -> torch.Tensor:
    from r1_plugin.chat import r1_chat_tokens

    return r1_chat_tokens(model, "How many r's are in strawberry?")


def test_goodfire_sae_on_the_bridge_equals_hooked(world: dict[str, Any]) -> None:
    sae, hooked, bridge = world["sae"], world["hooked"], world["bridge"]
    assert sae.cfg.metadata.hook_name == HOOK
    tokens = _tokens(hooked)
    assert torch.equal(tokens, _tokens(bridge))
    with torch.no_grad():
        _, on_hooked = hooked.run_with_cache_with_saes(tokens, saes=[sae])
        _, on_bridge = bridge.run_with_cache_with_saes(tokens, saes=[sae])
        acts_hooked = on_hooked[f"{HOOK}.hook_sae_acts_post"]
        acts_bridge = on_bridge[bridge.get_sae_hook_name(sae)]
    assert acts_hooked.abs().sum() > 0, "the SAE must fire (else the test proves nothing)"
    torch.testing.assert_close(acts_bridge, acts_hooked, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        logits_hooked = hooked.run_with_saes(tokens, saes=[sae])
        logits_bridge = bridge.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(logits_bridge, logits_hooked, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["add", "clamp", "ablate"])
@pytest.mark.parametrize("attached", [False, True])
def test_steering_by_sae_feature_on_the_bridge_equals_hooked(world: dict[str, Any], mode: str,
                                                             attached: bool) -> None:
    """Steering by a Goodfire feature gives the same tokens on both kinds, with the SAE spliced in
    (`add_sae`: steering acts on its output hook) or not."""
    sae, hooked, bridge = world["sae"], world["hooked"], world["bridge"]
    tokens = _tokens(hooked)
    with torch.no_grad():
        _, cache = hooked.run_with_cache(tokens, names_filter=[HOOK])
        feature = int(sae.encode(cache[HOOK])[0].sum(0).argmax())  # a feature that fires on this prompt
    outs = []
    for model in (hooked, bridge):
        if attached:
            model.add_sae(sae, use_error_term=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GateNeverOpenedWarning)
                with steer(model, sae=sae, feature=feature, strength=8.0 if mode != "ablate" else 0.0, mode=mode,
                           gate=0) as result:
                    outs.append(model.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False,
                                               use_past_kv_cache=True))
        finally:
            if attached:
                model.reset_saes()
        assert result.opened and result.hook_name.endswith("hook_sae_output") == attached
    assert torch.equal(outs[0], outs[1]), mode
    with torch.no_grad():
        plain = hooked.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False)
    if mode == "add":
        assert not torch.equal(outs[0], plain), "steering must change the tokens (else the test proves nothing)"


def test_the_readme_example_runs_as_written_on_sae_transformer_bridge(world: dict[str, Any],
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example with only the model-loading statement swapped for SAETransformerBridge (and the
    hardware for this CPU): everything after it runs unchanged."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from r1_plugin.testing.feature_db import build_tiny_feature_db

    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    loading = re.search(r"model = HookedSAETransformer\.from_pretrained_no_processing\(.*?\n\)[^\n]*\n", code,
                        flags=re.S)
    assert loading, "README example changed: update this test"
    code = code.replace(loading.group(0), "model = SAETransformerBridge.boot_transformers(FOLDER, device='cpu', "
                                          "dtype=torch.float32)\n")
    code = code.replace('device="cuda:7", dtype="bfloat16"', 'device="cpu"').replace("max_new_tokens=256",
                                                                                       "max_new_tokens=2")
    lookup = get_pretrained_saes_directory()["goodfire-deepseek-r1-logic"]
    monkeypatch.setattr(lookup, "config_overrides", {**lookup.config_overrides, "d_in": tiny_config()["hidden_size"],
                                                     "d_sae": D_SAE})
    tiny = build_tiny_feature_db(tmp_path / "logic", label_format="sqlite")
    tiny.activations_path.rename(tmp_path / "logic" / "logic-1.ddb")
    monkeypatch.chdir(tmp_path)
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    namespace: dict[str, Any] = {"SAETransformerBridge": SAETransformerBridge, "FOLDER": str(world["folder"]),
                                 "torch": torch}
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", GateNeverOpenedWarning)
        exec(compile(code, str(README), "exec"), namespace)
    model, tokens, out, result = (namespace[k] for k in ("model", "tokens", "out", "result"))
    assert type(model).__name__ == "SAETransformerBridge" and model.cfg.n_layers == 38
    assert result.hook_name in (HOOK, "blocks.37.hook_out") and len(result.records) == 1
    assert out.shape == (1, tokens.shape[1] + 2) and torch.equal(out[:, : tokens.shape[1]], tokens)
    assert result.last.prompt_length == [tokens.shape[1]]


def test_a_gate_opening_is_the_same_on_both(world: dict[str, Any]) -> None:
    """AfterResponsePrefix on a prefilled response prefix opens at the same real position on both kinds."""
    from r1_plugin.chat import format_r1_prompt

    hooked, bridge = world["hooked"], world["bridge"]
    text = format_r1_prompt(hooked, "What is 7 times 8?") + "Okay, so the user asks about multiplication.\n\n"
    ids = hooked.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    opened = []
    for model in (hooked, bridge):
        with steer(model, HOOK, torch.zeros(hooked.cfg.d_model), 1.0, AfterResponsePrefix()) as result:
            model.generate(ids, max_new_tokens=2, do_sample=False, verbose=False)
        opened.append(result.open_at)
    assert opened[0] == opened[1] and opened[0][0] is not None
