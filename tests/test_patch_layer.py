"""The patch layer keeps the README's promises: all-or-nothing per patch module, PatchTargetError from every patch,
skipped (not failed) when the target is gone, and a failing patch reported once without breaking an import.

Runs with TransformerLens 3.9 and SAELens (the targets of the HookedTransformer patches); the TransformerLens 4
side is in tests/test_import_tl4.py.
"""

from __future__ import annotations

import pytest
from test_isolation import last_json, run_python

# A fresh process: TransformerLens imported, one target deleted so that a LATE patch of the module fails, every
# other target of that module recorded before `import r1_plugin` and compared after it.
ROLLBACK = """
    import copy, json, warnings
    import transformer_lens
    import transformer_lens.HookedTransformer as _unused  # noqa
    import importlib
    ht_module = importlib.import_module("transformer_lens.HookedTransformer")
    from transformer_lens import supported_models
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens.cache import key_value_cache
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
    HT = ht_module.HookedTransformer

    def targets():
        return {
            "tl_models": {
                "names": list(supported_models.OFFICIAL_MODEL_NAMES),
                "aliases": copy.deepcopy(supported_models.MODEL_ALIASES),
                "ids": [id(supported_models.OFFICIAL_MODEL_NAMES), id(supported_models.MODEL_ALIASES)],
                "functions": [id(x) for x in (
                    loading.get_official_model_name, loading.convert_hf_model_config,
                    loading.get_pretrained_state_dict, getattr(ht_module, "AutoTokenizer", None))],
            },
            "tl_deepseek": [id(x) for x in (
                HookedTransformerConfig.__dict__["from_dict"], ht_module.TransformerBlock,
                TransformerLensKeyValueCache.__dict__["init_cache"], HT.__dict__["get_pos_offset"],
                HT.__dict__["from_pretrained"], HT.__dict__["load_and_process_state_dict"],
                ht_module.get_device_for_block_index, key_value_cache.get_device_for_block_index,
                HT.__dict__.get("move_model_modules_to_device"),
            )],
        }

    DELETE
    before = targets()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import r1_plugin
    from r1_plugin import _patches
    after = targets()
    print(json.dumps({"same": {name: after[name] == before[name] for name in before}, "status": _patches.patch_status(),
                      "warnings": [str(w.message) for w in caught if w.category.__name__ == "PatchFailedWarning"]}))
"""


@pytest.mark.parametrize(("module", "delete", "missing"), [
    # tl_models' last patch (the tokenizer errors) fails after the names, aliases and three functions changed
    ("tl_models", "del ht_module.AutoTokenizer", "AutoTokenizer"),
    # tl_deepseek's last patch fails after six patches and the two get_device_for_block_index replacements
    ("tl_deepseek", "del HT.move_model_modules_to_device", "move_model_modules_to_device"),
])
def test_a_patch_module_that_fails_midway_restores_every_target(module: str, delete: str, missing: str) -> None:
    """Every attribute and registry the module changed before its failing patch is back to the original object
    (the same function objects, the same list and dict, with the same contents), and the failure is reported."""
    result = last_json(run_python(ROLLBACK.replace("DELETE", delete)))
    assert result["status"][module].startswith("failed: PatchTargetError"), result["status"]
    assert missing in result["status"][module]
    assert len(result["warnings"]) == 1 and module in result["warnings"][0]
    other = next(name for name in ("tl_models", "tl_deepseek") if name != module)
    assert result["status"][other] == "applied"
    assert result["same"] == {module: True, other: False}  # the other module did apply


def test_rollback_restores_attributes_classmethods_and_containers_in_place() -> None:
    """`all_or_nothing`: a replaced module attribute, a replaced classmethod (the classmethod object itself), an
    added attribute, a list and a dict (and a list inside it) changed in place all come back when the block raises;
    nothing is undone when it does not."""
    from types import SimpleNamespace

    from r1_plugin._patches._marks import all_or_nothing, keep, replace

    class Target:
        @classmethod
        def build(cls) -> str:
            return "original"

    original_build = Target.__dict__["build"]
    module = SimpleNamespace(function=len)
    names, table = ["a", "b"], {"x": ["1"], "y": []}
    with pytest.raises(RuntimeError, match="injected"), all_or_nothing():
        replace(module, "function", max)
        replace(module, "added", 1)
        replace(Target, "build", classmethod(lambda cls: "patched"))
        keep(names)
        names.insert(1, "r1")
        keep(table)
        table["x"].append("2")
        table["z"] = ["new"]
        assert Target.build() == "patched"
        raise RuntimeError("injected")
    assert module.function is len and not hasattr(module, "added")
    assert Target.__dict__["build"] is original_build and Target.build() == "original"
    assert names == ["a", "b"] and table == {"x": ["1"], "y": []}
    with all_or_nothing():
        replace(module, "function", max)
    assert module.function is max


def test_a_patch_whose_target_is_gone_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A REQUIRES entry that does not exist skips the module (status "skipped: ..." naming what is missing, the
    version and why), imports nothing of it, and is no failure for doctor."""
    import r1_plugin
    from r1_plugin import _patches

    r1_plugin.register()
    monkeypatch.setitem(_patches.REQUIRES, "tl_generation",
                        (("transformer_lens.no_such_module",), "the reason the requirement names"))
    monkeypatch.setattr(_patches, "_status", dict(_patches._status))
    status = _patches.apply_module("tl_generation")
    assert status == ("skipped: transformer-lens 3.9.0 has no transformer_lens.no_such_module "
                      "(the reason the requirement names)")
    assert _patches.patch_status()["tl_generation"] == status
    monkeypatch.setitem(_patches.REQUIRES, "tl_generation", (("transformer_lens:no_such_attribute",), "why"))
    assert _patches.apply_module("tl_generation").startswith("skipped: transformer-lens 3.9.0 has no "
                                                             "transformer_lens.no_such_attribute (why)")


def test_a_patch_failing_in_the_import_hook_is_reported_once_and_the_import_goes_on() -> None:
    """r1_plugin first, then TransformerLens, with tl_generation's apply() failing: `import transformer_lens`
    works, the other patches apply, one PatchFailedWarning (not two when applied again), doctor exits 1."""
    proc = run_python("""
        import contextlib, io, json, warnings
        import r1_plugin
        from r1_plugin import _patches
        from r1_plugin._patches import tl_generation
        def apply():
            raise RuntimeError("injected")
        tl_generation.apply = apply
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import transformer_lens
            _patches.apply_target("transformer_lens", raise_errors=False)
        from transformer_lens import HookedTransformer
        from r1_plugin.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(["doctor"])
        print(json.dumps({"status": _patches.patch_status(), "doctor": code, "printed": out.getvalue(),
                          "warnings": [str(w.message) for w in caught if w.category.__name__ == "PatchFailedWarning"],
                          "forward_patched": hasattr(HookedTransformer.forward, "_r1_plugin_patched")}))
    """)
    result = last_json(proc)
    assert result["status"]["tl_generation"] == "failed: RuntimeError: injected"
    assert result["status"]["tl_models"] == "applied" and result["status"]["tl_deepseek"] == "applied"
    assert len(result["warnings"]) == 1 and "tl_generation" in result["warnings"][0]
    assert result["doctor"] == 1 and "failed: RuntimeError: injected" in result["printed"]
    assert result["forward_patched"] is False


@pytest.mark.parametrize(("delete", "patch", "attribute"), [
    ("del HookedTransformer.generate_stream", "tl_generation", "generate_stream"),
    ("del ht_module.get_device_for_block_index", "tl_deepseek", "get_device_for_block_index"),
])
def test_every_patch_raises_patch_target_error_through_require(delete: str, patch: str, attribute: str) -> None:
    """tl_generation and tl_deepseek's device placement, with their target missing: `register()` raises
    PatchTargetError naming the patch, the attribute and the versions (not a bare R1PluginError or an
    AttributeError), and tl_generation's two other wrappers are rolled back."""
    proc = run_python(f"""
        import importlib, json, warnings
        from transformer_lens import HookedTransformer
        ht_module = importlib.import_module("transformer_lens.HookedTransformer")
        {delete}
        warnings.simplefilter("ignore")
        import r1_plugin
        from r1_plugin.errors import PatchTargetError
        try:
            r1_plugin.register()
        except PatchTargetError as exc:
            message = str(exc)
        print(json.dumps({{"message": message,
                          "forward": hasattr(HookedTransformer.forward, "_r1_plugin_patched")}}))
    """)
    result = last_json(proc)
    assert patch in result["message"] and attribute in result["message"]
    assert "transformer-lens 3.9" in result["message"]
    assert result["forward"] is (patch != "tl_generation")




def test_registries_are_written_only_from_the_patch_layer_and_the_demo_class_only_on_request() -> None:
    """No module outside r1_plugin/_patches/ writes TransformerLens's or SAELens's registries; the demo's tied
    top-k SAE class is registered by `_patches.sae_lens_demo` only when asked, never by `register()`."""
    import ast

    from test_isolation import REPO

    registries = {"SAE_CLASS_REGISTRY", "SAE_TRAINING_CLASS_REGISTRY", "NAMED_PRETRAINED_SAE_LOADERS",
                  "NAMED_PRETRAINED_SAE_CONFIG_GETTERS", "OFFICIAL_MODEL_NAMES", "MODEL_ALIASES"}
    registering = {"register_sae_class", "register_sae_training_class", "register_adapter"}
    mutators = {"update", "setdefault", "pop", "append", "insert", "extend", "clear", "__setitem__"}

    def name(node: ast.AST) -> str:
        return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""

    offenders = []
    for path in sorted((REPO / "r1_plugin").rglob("*.py")):
        if "_patches" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            calls = isinstance(node, ast.Call) and (
                name(node.func) in registering
                or (isinstance(node.func, ast.Attribute) and node.func.attr in mutators
                    and name(node.func.value) in registries))
            stores = isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)) and any(
                isinstance(t, ast.Subscript) and name(t.value) in registries
                for t in (node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]))
            if calls or stores:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
    proc = run_python("""
        import json
        import r1_plugin
        r1_plugin.register()
        from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
        before = "r1_plugin_tied_topk" in SAE_CLASS_REGISTRY or "r1_plugin_tied_topk" in SAE_TRAINING_CLASS_REGISTRY
        from r1_plugin._patches.sae_lens_demo import register_tied_topk
        name = register_tied_topk()
        again = register_tied_topk()
        print(json.dumps({"before": before, "name": name, "again": again,
                          "after": [name in SAE_CLASS_REGISTRY, name in SAE_TRAINING_CLASS_REGISTRY]}))
    """)
    result = last_json(proc)
    assert result == {"before": False, "name": "r1_plugin_tied_topk", "again": "r1_plugin_tied_topk",
                      "after": [True, True]}
