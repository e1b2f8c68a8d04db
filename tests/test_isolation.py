"""`import r1_plugin` changes nothing r1_plugin does not own, and every patch explains and checks itself.

Subprocess tests start from a fresh interpreter (the import order and the modules loaded are what is tested);
the rest run in-process after `r1_plugin.register()`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

import r1_plugin
from r1_plugin import _patches
from r1_plugin._patches._marks import MARK, is_patched
from r1_plugin.models.model_names import ALL_MODELS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformer_lens", "sae_lens")


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=600)


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------------
# Light entry points


def test_import_and_model_free_cli_commands_import_no_torch_transformer_lens_or_sae_lens() -> None:
    """`import r1_plugin`, then `models`, `saes list`, `doctor`, `features search|show` (and the `features download`
    module) in one fresh process: none of torch, TransformerLens, SAELens is ever imported."""
    from r1_plugin.demo import assets

    db = f"--labels {assets.FEATURES_LABELS} --activations {assets.FEATURES_ACTIVATIONS}"
    proc = run_python(f"""
        import contextlib, io, json, sys
        heavy = {HEAVY!r}
        import r1_plugin
        after_import = [m for m in heavy if m in sys.modules]
        from r1_plugin.cli import main
        codes, out = [], io.StringIO()
        with contextlib.redirect_stdout(out):
            for argv in (["models"], ["saes", "list"], ["doctor"], "features search backtracking {db}".split(),
                         "features show 1 {db}".split()):
                codes.append(main(argv))
        import r1_plugin.features.download
        print(json.dumps({{"after_import": after_import, "codes": codes, "text": out.getvalue(),
                          "heavy": [m for m in heavy if m in sys.modules]}}))
    """)
    result = last_json(proc)
    assert result["after_import"] == [] and result["heavy"] == [], result["heavy"]
    assert result["codes"] == [0, 0, 0, 0, 0]
    text = result["text"]
    assert "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" in text and "goodfire-deepseek-r1-math" in text
    assert re.search(r"tl_models +pending \(transformer_lens not imported yet\)", text)  # doctor, light
    assert "backtracking" in text


# --------------------------------------------------------------------------------------------------------------
# Patches: applied on first import of their target, in any order; versions and missing targets


ORDERS = [
    ("r1_plugin", "transformer_lens", "sae_lens"),
    ("transformer_lens", "r1_plugin", "sae_lens"),
    ("sae_lens", "r1_plugin"),
    ("r1_plugin", "r1_plugin.models.deepseek_v3.config", "sae_lens"),  # our module imports TL first
    ("r1_plugin", "r1_plugin.saes.batch_topk"),  # our module imports SAELens first
]


@pytest.mark.parametrize("order", ORDERS, ids=["->".join(o) for o in ORDERS])
def test_patches_apply_in_any_import_order(order: tuple[str, ...]) -> None:
    """Whichever comes first, every patch is applied once TransformerLens and SAELens are imported, R1 names
    resolve, Goodfire's releases are in SAELens's directory, and the hook leaves sys.meta_path."""
    proc = run_python(f"""
        import importlib, json
        for name in {order!r}:
            importlib.import_module(name)
        import r1_plugin, sae_lens, transformer_lens
        from r1_plugin import _patches
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import get_official_model_name
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        print(json.dumps({{
            "status": _patches.patch_status(),
            "hook": _patches.hook_installed(),
            "from_pretrained": bool(getattr(HookedTransformer.from_pretrained, "{MARK}", False)),
            "alias": get_official_model_name("r1-distill-qwen-7b"),
            "goodfire": sorted(r for r in get_pretrained_saes_directory() if r.startswith("goodfire-deepseek")),
        }}))
    """)
    result = last_json(proc)
    assert set(result["status"].values()) == {"applied"}, result["status"]
    assert result["hook"] is False and result["from_pretrained"] is True
    assert result["alias"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert result["goodfire"] == ["goodfire-deepseek-r1-logic", "goodfire-deepseek-r1-math"]


def test_register_applies_every_patch_and_doctor_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`r1_plugin.register()` imports both libraries and applies everything; `r1_plugin.doctor()` says so."""
    r1_plugin.register()
    assert set(_patches.patch_status().values()) == {"applied"}
    info = r1_plugin.doctor()
    printed = capsys.readouterr().out
    for name in _patches.PATCH_MODULES:
        assert f"{name}" in printed and info["patches"][name] == "applied"
    assert info["models"] == sorted(info["models"], key=str.casefold)
    assert set(info["models"]) == {spec.hf_id for spec in ALL_MODELS}
    assert info["sae_releases"] == ["goodfire-deepseek-r1-logic", "goodfire-deepseek-r1-math"]
    assert info["hub"]["offline"] is True and info["hub"]["cache"] == os.environ["HF_HUB_CACHE"]
    assert info["wandb"]["WANDB_MODE"] == "offline"
    assert "devices:" in printed and "transformer-lens" in printed


def test_versions_outside_the_tested_range_give_one_warning_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """One warning names every package outside TESTED_VERSIONS; a second check stays silent."""
    fake = {"transformer-lens": "3.10.0", "sae-lens": "6.54.12", "transformers": "6.1.0"}
    from r1_plugin._patches import _versions

    monkeypatch.setattr(_versions, "installed_versions", lambda: fake)
    monkeypatch.setattr(_versions, "_checked", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _patches.check_versions()
        _patches.check_versions()
    assert len(caught) == 1 and issubclass(caught[0].category, _patches.PatchVersionWarning)
    message = str(caught[0].message)
    assert "transformer-lens 3.10.0" in message and "transformers 6.1.0" in message and "sae-lens 6.54" not in message
    assert "transformer-lens >=3.9,<3.10 or >=4.0,<5.0" in message
    for tested in ("3.9.0", "4.3.0"):
        monkeypatch.setattr(_versions, "installed_versions", lambda v=tested: {**fake, "transformer-lens": v,
                                                                               "transformers": "5.24.0"})
        assert _patches.untested_versions() == {}


def test_a_missing_patch_target_fails_that_patch_visibly_without_breaking_the_import() -> None:
    """A TransformerLens without a function r1_plugin patches: `import r1_plugin` still works and leaves
    TransformerLens as it was, one PatchFailedWarning names the patch and the versions, `doctor` shows the failure
    and exits 1, and `r1_plugin.register()` raises PatchTargetError."""
    proc = run_python("""
        import contextlib, io, json, warnings
        import transformer_lens.loading_from_pretrained as loading
        del loading.get_pretrained_state_dict
        official = loading.get_official_model_name
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import r1_plugin
            import transformer_lens
        from r1_plugin import _patches
        from r1_plugin.cli import main
        from r1_plugin.errors import PatchTargetError, R1PluginError
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["doctor"])
        try:
            r1_plugin.register()
        except PatchTargetError as exc:
            raised = isinstance(exc, R1PluginError) and str(exc)
        print(json.dumps({"warnings": [(w.category.__name__, str(w.message)) for w in caught],
                          "status": _patches.patch_status(), "doctor": code, "raised": raised,
                          "unpatched": loading.get_official_model_name is official}))
    """)
    result = last_json(proc)
    failed = [w for w in result["warnings"] if w[0] == "PatchFailedWarning"]
    assert len(failed) == 1 and "tl_models" in failed[0][1] and "get_pretrained_state_dict" in failed[0][1]
    assert result["status"]["tl_models"].startswith("failed: PatchTargetError")
    assert result["status"]["tl_deepseek"] == "applied"  # the other modules do not depend on it
    assert result["unpatched"] is True  # rolled back: name resolution is TransformerLens's own
    assert result["doctor"] == 1
    assert "tl_models" in result["raised"] and "get_pretrained_state_dict" in result["raised"]
    assert "transformer-lens 3.9" in result["raised"] and "sae-lens" in result["raised"]


def _patched_callables() -> dict[str, Any]:
    from sae_lens.loading import pretrained_saes_directory
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    return {
        "get_official_model_name": loading.get_official_model_name,
        "convert_hf_model_config": loading.convert_hf_model_config,
        "get_pretrained_state_dict": loading.get_pretrained_state_dict,
        "HookedTransformerConfig.from_dict": HookedTransformerConfig.__dict__["from_dict"].__func__,
        "init_cache": TransformerLensKeyValueCache.__dict__["init_cache"].__func__,
        "get_pos_offset": HookedTransformer.get_pos_offset,
        "from_pretrained": HookedTransformer.__dict__["from_pretrained"].__func__,
        "load_and_process_state_dict": HookedTransformer.load_and_process_state_dict,
        "get_pretrained_saes_directory": pretrained_saes_directory.get_pretrained_saes_directory,
    }


def test_every_wrapper_takes_and_forwards_args_and_kwargs() -> None:
    """No wrapper re-declares TransformerLens's or SAELens's signature: each takes *args and **kwargs."""
    import inspect

    r1_plugin.register()
    for name, func in _patched_callables().items():
        assert is_patched(func), name
        kinds = {p.kind for p in inspect.signature(func, follow_wrapped=False).parameters.values()}
        assert {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds, name


def test_a_parameter_a_later_transformer_lens_adds_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-apply two patches over stand-ins with an extra parameter (as TL 3.10 might add): calls for other
    architectures reach the original with it, by position and by keyword."""
    from types import SimpleNamespace

    from r1_plugin._patches import tl_deepseek, tl_models

    seen: list[tuple[Any, ...]] = []

    def convert_hf_model_config(model_name: str, new_flag: bool = False, **kwargs: Any) -> dict[str, Any]:
        seen.append(("convert", model_name, new_flag, kwargs))
        return {}

    fake_loading = SimpleNamespace(convert_hf_model_config=convert_hf_model_config)
    monkeypatch.setattr(tl_models, "loading", fake_loading)
    tl_models._patch_convert_hf_model_config()
    fake_loading.convert_hf_model_config("gpt2", True, revision="main")
    fake_loading.convert_hf_model_config("gpt2", new_flag=True)

    class FakeHookedTransformer:
        cfg = SimpleNamespace(original_architecture="GPT2LMHeadModel")

        def load_and_process_state_dict(self, state_dict: dict, fold_ln: bool = True, *, new_option: int = 0,
                                        **rest: Any) -> None:
            seen.append(("load", fold_ln, new_option))

        def get_pos_offset(self, past_kv_cache: Any, batch_size: int, new_option: int = 0) -> int:
            return new_option

    fake_module = SimpleNamespace(HookedTransformer=FakeHookedTransformer)
    monkeypatch.setattr(tl_deepseek, "hooked_transformer_module", fake_module)
    tl_deepseek._patch_load_and_process_state_dict()
    tl_deepseek._patch_get_pos_offset()
    model = FakeHookedTransformer()
    model.load_and_process_state_dict({}, False, new_option=3)
    assert model.get_pos_offset(None, 1, new_option=7) == 7
    assert seen == [("convert", "gpt2", True, {"revision": "main"}), ("convert", "gpt2", True, {}),
                    ("load", False, 3)]


# --------------------------------------------------------------------------------------------------------------
# TransformerLens's and SAELens's registries: only the R1 entries added, in TransformerLens's order


def test_registries_differ_from_stock_only_by_the_r1_entries() -> None:
    """TL's names and aliases and SAELens's directory, compared with a process that never imports r1_plugin."""
    proc = run_python("""
        import json, sys
        from transformer_lens import supported_models
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        assert "r1_plugin" not in sys.modules
        print(json.dumps({"names": supported_models.OFFICIAL_MODEL_NAMES,
                          "aliases": supported_models.MODEL_ALIASES,
                          "releases": list(get_pretrained_saes_directory())}))
    """)
    stock = last_json(proc)
    r1_plugin.register()
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from transformer_lens import supported_models

    ours = {spec.hf_id for spec in ALL_MODELS}
    names = supported_models.OFFICIAL_MODEL_NAMES
    assert [n for n in names if n not in ours] == stock["names"]
    assert set(names) - set(stock["names"]) == ours
    assert names == sorted(names, key=str.casefold)  # TransformerLens's own ordering rule (its unit test)
    aliases = supported_models.MODEL_ALIASES
    assert {k: v for k, v in aliases.items() if k not in ours} == stock["aliases"]
    assert list(aliases) == sorted(aliases, key=str.casefold)
    assert {k: tuple(v) for k, v in aliases.items() if k in ours} == {s.hf_id: s.aliases for s in ALL_MODELS}
    releases = list(get_pretrained_saes_directory())
    assert [r for r in releases if r in stock["releases"]] == stock["releases"]
    assert set(releases) - set(stock["releases"]) == {"goodfire-deepseek-r1-logic", "goodfire-deepseek-r1-math"}


# --------------------------------------------------------------------------------------------------------------
# Names vs local folders


def _write_config(folder: Path, config: Any) -> Path:
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    return folder


def _tiny_qwen2() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100, max_position_embeddings=131072,
                       architectures=["Qwen2ForCausalLM"])


def test_a_folder_named_like_an_alias_does_not_take_it_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ./GPT2-small/config.json present, "GPT2-small" still means TransformerLens's gpt2; only the path
    "./GPT2-small" means the folder."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import GPT2Config

    r1_plugin.register()
    _write_config(tmp_path / "GPT2-small", GPT2Config(n_layer=1, n_embd=16, n_head=2))
    monkeypatch.chdir(tmp_path)
    assert loading.get_official_model_name("GPT2-small") == "gpt2"
    assert loading.get_official_model_name("gpt2") == "gpt2"
    assert loading.get_official_model_name("./GPT2-small") == str(tmp_path / "GPT2-small")
    from r1_plugin.models import local_folders

    assert local_folders.local_folder("GPT2-small") is None and local_folders.local_folder("gpt2") is None


def test_local_folders_get_transformer_lens_conversion_unless_r1_family(tmp_path: Path) -> None:
    """A Qwen2 folder gets exactly TransformerLens's config dict; the same config in a distill-named folder gets
    r1_plugin's (which differs as docs/models.md explains)."""
    from transformer_lens import loading_from_pretrained as loading

    from r1_plugin.models import configs

    r1_plugin.register()
    plain = _write_config(tmp_path / "my-qwen2", _tiny_qwen2())
    distill = _write_config(tmp_path / "DeepSeek-R1-Distill-Qwen-1.5B", _tiny_qwen2())
    stock = loading.convert_hf_model_config.__wrapped_original__
    assert loading.convert_hf_model_config(str(plain)) == stock(str(plain))
    ours = loading.convert_hf_model_config(str(distill))
    from transformers import AutoConfig

    assert ours == configs.hf_to_tl_config(AutoConfig.from_pretrained(distill), str(distill))
    assert ours["default_prepend_bos"] is True and stock(str(plain))["default_prepend_bos"] is False


# --------------------------------------------------------------------------------------------------------------
# No process-wide side effects outside _patches


def test_no_plotting_code_touches_pyplot_or_the_backend() -> None:
    """No module calls `matplotlib.use` or imports pyplot (static check over the package)."""
    offenders = []
    for path in sorted((REPO / "r1_plugin").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if re.search(r"matplotlib\.use\(|import matplotlib\.pyplot|from matplotlib import pyplot", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_matplotlib_backend_is_unchanged_after_every_plotting_function(tmp_path: Path) -> None:
    """With a non-default backend chosen by the 'user', every plotting function leaves it (and pyplot) alone."""
    proc = run_python(f"""
        import json, sys
        from pathlib import Path
        import matplotlib
        matplotlib.use("svg")
        import torch
        import pandas as pd
        out = Path({str(tmp_path)!r})
        from r1_plugin.demo.run import _plot_activations, _plot_sweep
        from r1_plugin.sinks.detect import SinkReport
        from r1_plugin.sinks.plotting import heatmap_figure, save_heatmap
        from r1_plugin.steering.sweep import SweepResult
        from r1_plugin.tracking import start_run

        class Model:
            def to_str_tokens(self, tokens):
                return [str(int(t)) for t in tokens]

        tokens = torch.arange(6)[None]
        figures = [
            _plot_activations(Model(), [("t", tokens, torch.rand(6), 2)], "label", out / "a.png"),
            _plot_sweep([{{"strength": 0.0, "backtracks": 1, "completion_tokens": 9}}], "label", out / "s.png"),
        ]
        alpha = torch.rand(2, 2, 6, dtype=torch.float64)
        report = SinkReport(alpha=alpha, sink_rate=torch.rand(6), sink_positions=[0], n_queries=torch.arange(6, 0, -1),
                            epsilon=0.3, min_sink_rate=0.5, min_queries=1, layers=[0, 1])
        figures.append(heatmap_figure(report))
        save_heatmap(report, out / "h.png")
        table = pd.DataFrame({{"prompt_index": [0, 0], "strength": [0.0, 1.0], "kl": [0.0, 0.1],
                              "feature_act": [0.0, 1.0], "reverted": [False, True], "reverted_kl": [False, True]}})
        figures.append(SweepResult(table=table, primary_metric="kl").plot())
        with start_run("plots", {{}}, mode="offline", dir=out / "wb") as tracker:
            tracker.log_heatmap("heat", [[0.0, 1.0], [1.0, 0.0]], title="x")
            tracker.log_figure("fig", figures[0])
        print(json.dumps({{"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                          "figures": [type(f).__name__ for f in figures],
                          "pngs": sorted(p.name for p in out.glob("*.png"))}}))
    """)
    result = last_json(proc)
    assert result["backend"] == "svg" and result["pyplot"] is False
    assert result["figures"] == ["Figure"] * 4
    assert result["pngs"] == ["a.png", "h.png", "s.png"]


# The stages of scripts/make_tiny_r1.py (which rebuilds the committed assets; the demo never runs them) build
# the tiny tokenizer with r1_plugin.testing.tokenizers, the builder the tests use for R1's tokenizer families.
BUILD_SCRIPT_MODULES = {"demo/build.py"}


def test_runtime_modules_never_import_the_test_helpers() -> None:
    """No runtime module imports r1_plugin.testing (at module level or inside a function), and no runtime module
    imports the asset build stages."""
    import ast

    offenders = []
    for path in sorted((REPO / "r1_plugin").rglob("*.py")):
        relative = path.relative_to(REPO / "r1_plugin")
        if relative.parts[0] == "testing" or relative.as_posix() in BUILD_SCRIPT_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "r1_plugin.testing" or n.startswith("r1_plugin.testing.") or n == "r1_plugin.demo.build"
                   for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
