"""`import r1_plugin` never makes importing TransformerLens fail, on TransformerLens 3.9 and 4.x alike.

Marked `tl4`: `make compat-tl4` runs these under the newest TransformerLens 4 (no SAELens), `make test` under 3.9.
Under TransformerLens 4 the three HookedTransformer patches are skipped (their target was removed) and doctor says
so; under 3.9 they apply. Each case is a fresh interpreter, because the import order is what is tested.
"""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.version import Version
from test_isolation import last_json, run_python

pytestmark = pytest.mark.tl4

TL4 = Version(metadata.version("transformer-lens")).major >= 4
HOOKED_PATCHES = ("tl_models", "tl_deepseek", "tl_generation")

ORDERS = [
    ("r1_plugin", "transformer_lens.model_bridge"),
    ("r1_plugin", "transformer_lens", "transformer_lens.model_bridge"),
    ("transformer_lens", "r1_plugin", "transformer_lens.model_bridge"),
    ("transformer_lens.model_bridge", "r1_plugin"),
]


def expected_hooked_status(status: str) -> None:
    """A HookedTransformer patch: skipped with the reason under TL 4, applied under 3.9."""
    if TL4:
        version = metadata.version("transformer-lens")
        assert status.startswith(f"skipped: transformer-lens {version} has no transformer_lens.HookedTransformer")
        assert "removed in TransformerLens 4" in status and "TransformerBridge" in status
    else:
        assert status == "applied"


@pytest.mark.parametrize("order", ORDERS, ids=["->".join(o) for o in ORDERS])
def test_transformer_lens_and_its_bridge_import_in_any_order_with_r1_plugin(order: tuple[str, ...]) -> None:
    """Every order imports cleanly (no PatchFailedWarning, no exception), `TransformerBridge` is importable, and each
    HookedTransformer patch is applied (3.9) or skipped with its reason (4.x)."""
    proc = run_python(f"""
        import importlib, json, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in {order!r}:
                importlib.import_module(name)
            from transformer_lens.model_bridge import TransformerBridge
        from r1_plugin import _patches
        print(json.dumps({{"status": _patches.patch_status(), "bridge": TransformerBridge.__name__,
                          "failed": [str(w.message) for w in caught if w.category.__name__ == "PatchFailedWarning"]}}))
    """)
    result = last_json(proc)
    assert result["bridge"] == "TransformerBridge" and result["failed"] == []
    for name in HOOKED_PATCHES:
        expected_hooked_status(result["status"][name])
    assert not any(s.startswith("failed") for s in result["status"].values()), result["status"]


def test_doctor_says_which_patches_apply_and_register_works_without_sae_lens() -> None:
    """`r1-plugin doctor` (light: imports nothing heavy) and `doctor --apply` exit 0 and show each HookedTransformer
    patch as applied (3.9) or skipped with its reason (4.x); `r1_plugin.register()` raises nothing, and a SAELens
    that is not installed is "skipped: sae_lens is not installed"."""
    proc = run_python("""
        import contextlib, io, json, sys
        import r1_plugin
        from r1_plugin.cli import main
        from r1_plugin import _patches
        with contextlib.redirect_stdout(io.StringIO()) as light:
            light_code = main(["doctor"])
        heavy = [m for m in ("torch", "transformer_lens", "sae_lens") if m in sys.modules]
        with contextlib.redirect_stdout(io.StringIO()) as applied:
            apply_code = main(["doctor", "--apply"])
        r1_plugin.register()
        print(json.dumps({"light": light.getvalue(), "light_code": light_code, "heavy": heavy,
                          "applied": applied.getvalue(), "apply_code": apply_code,
                          "status": _patches.patch_status()}))
    """)
    result = last_json(proc)
    assert result["light_code"] == 0 and result["apply_code"] == 0 and result["heavy"] == []
    for name in HOOKED_PATCHES:
        expected_hooked_status(result["status"][name])
        line = next(line for line in result["applied"].splitlines() if line.split()[:1] == [name])
        assert line.split(None, 1)[1] == result["status"][name]
    try:
        metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        assert result["status"]["sae_lens"] == "skipped: sae_lens is not installed"
        assert "skipped: sae_lens is not installed" in result["light"]
    else:
        assert result["status"]["sae_lens"] == "applied"


# Modules that cannot exist without what they patch or wrap: HookedTransformer (gone in TL 4) or SAELens.
NEEDS_HOOKED_TRANSFORMER = {"r1_plugin._patches._hooked", "r1_plugin._patches.tl_models", "r1_plugin._patches.tl_deepseek"}
NEEDS_SAE_LENS = {"r1_plugin._patches.sae_lens", "r1_plugin.saes.batch_topk"}
# The DeepSeek-V3 HookedTransformer itself (its config subclass, components and loader). The package's FP8
# modules, checkpoint reader and config checks import without it, and so do the test checkpoints and the bridge
# modules (r1_plugin.models.r1_bridge), which is how R1 loads on TL 4. A module listed here that becomes importable
# makes this test fail until it is taken off the list.
HOOKED_DEEPSEEK = {
    f"r1_plugin.models.deepseek_v3.{name}" for name in (
        "attention", "block", "config", "loading", "mlp", "moe", "rope", "streaming", "weight_names",
        "weight_processing",
    )
}
KNOWN_TL4_GAPS: set[str] = set()


def test_every_module_imports_except_those_whose_library_is_missing() -> None:
    """Importing each r1_plugin module in a fresh process: under TL 3.9 with SAELens all import; under TL 4 exactly
    the HookedTransformer patch modules, the SAELens ones (SAELens is not installed there) and the listed known
    gaps fail, each with ModuleNotFoundError."""
    proc = run_python("""
        import importlib, json, pkgutil, warnings
        warnings.simplefilter("ignore")
        import r1_plugin
        failed = {}
        for info in pkgutil.walk_packages(r1_plugin.__path__, "r1_plugin."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed[info.name] = type(exc).__name__
        print(json.dumps(failed))
    """)
    failed = last_json(proc)
    expected: set[str] = set()
    if TL4:
        expected |= NEEDS_HOOKED_TRANSFORMER | HOOKED_DEEPSEEK | KNOWN_TL4_GAPS
    try:
        metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        expected |= NEEDS_SAE_LENS
    assert set(failed) == expected, {"unexpected": set(failed) - expected, "now importable": expected - set(failed)}
    assert set(failed.values()) <= {"ModuleNotFoundError"}, failed
