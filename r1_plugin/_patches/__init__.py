"""Every patch r1_plugin makes into TransformerLens and SAELens lives in this package, one module per target.

- `tl_models`: TransformerLens's model-name registry, name resolution and HF-config conversion (R1 distills,
  DeepSeek-V3 names, local folders, clear errors).
- `tl_deepseek`: TransformerLens internals the DeepSeek-V3 architecture needs (config class, block factory,
  latent KV cache, streaming from_pretrained).
- `tl_generation`: class-level pass-throughs of HookedTransformer.forward / generate / generate_stream that report
  forward and generation boundaries to an observer attached to one instance (the steering tracker).
- `tl_bridge_generation`: the same generation boundaries for TransformerBridge.generate / generate_stream, and the
  bridge attention's KV cache under transformers 5.2x (which names it `cache`).
- `sae_lens`: SAELens's pretrained-SAE directory and loader registries (Goodfire's R1 SAEs from our yaml).

Each module has `apply()`: idempotent (guarded by a marker attribute), and each patch says in a comment what it
patches and why. `apply_module` runs `apply()` inside `_marks.all_or_nothing()`: every attribute a patch sets with
`_marks.replace` and every registry it changes in place after `_marks.keep` is restored when a later patch of the
same module fails, so a module is either wholly applied or not at all. A module named `tl_*` patches
`transformer_lens`, one named `sae_lens*` patches `sae_lens` (`target_of`).

A patch module whose target is not there at all is SKIPPED, not failed: its target package is not installed, or a
module or attribute it declares in `REQUIRES` does not exist (TransformerLens 4 removed HookedTransformer, so the
three HookedTransformer patches are skipped there while the TransformerBridge ones apply). A target that exists but
lacks what a patch replaces is a failure (`PatchTargetError`, from `_marks.require`).

`import r1_plugin` imports neither library: `install()` applies a module's patches at once when its target is
already imported, and otherwise when the target is first imported, from a post-import hook on `sys.meta_path`
(`_PostImportHook`). That hook is process-wide state, which is why it lives here. Applied this way, a failing patch
never breaks the user's import: its status becomes "failed: ..." and one `PatchFailedWarning` says so (`r1-plugin
doctor` shows it and exits 1). `apply_all()` (what `r1_plugin.register()` calls) imports the targets and applies
everything now, and raises the first failure.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from r1_plugin._patches._versions import (
    TESTED_VERSIONS,
    PatchVersionWarning,
    check_versions,
    installed_versions,
    untested_versions,
    versions_text,
)

__all__ = [
    "PATCH_MODULES", "TARGET_PREFIXES", "REQUIRES", "TESTED_VERSIONS", "PatchFailedWarning", "PatchVersionWarning",
    "target_of", "installed_versions", "versions_text", "untested_versions", "check_versions", "missing_requirement",
    "apply_module", "apply_target", "apply_all", "patch_status", "install", "hook_installed",
]

# Applied in this order within a target; adding a patch module is one name here.
PATCH_MODULES: tuple[str, ...] = ("tl_models", "tl_deepseek", "tl_generation", "tl_bridge", "tl_bridge_generation", "sae_lens")

# Patch-module name prefix -> the top-level package whose import applies it.
TARGET_PREFIXES: tuple[tuple[str, str], ...] = (("tl_", "transformer_lens"), ("sae_lens", "sae_lens"))

# What must exist for a patch module's target to be there at all (beyond its installed target package): module
# names, or "module:attribute". When one is missing the module is skipped with the reason given here. A patch module
# not listed needs only its target package. Checked before the patch module is imported (it imports its targets).
_HOOKED = "HookedTransformer was removed in TransformerLens 4; its path there is TransformerBridge"
REQUIRES: dict[str, tuple[tuple[str, ...], str]] = {
    "tl_models": (("transformer_lens.HookedTransformer", "transformer_lens.loading_from_pretrained"), _HOOKED),
    "tl_deepseek": (("transformer_lens.HookedTransformer", "transformer_lens.components",
                     "transformer_lens.config.hooked_transformer_config"), _HOOKED),
    "tl_generation": (("transformer_lens.HookedTransformer",), _HOOKED),
}

_status: dict[str, str] = {}  # patch module -> "applied" | "skipped: <reason>" | "failed: <error>"
_lock = threading.RLock()


class PatchFailedWarning(UserWarning):
    """A patch r1_plugin applies when TransformerLens or SAELens is imported failed (and was rolled back)."""


def target_of(name: str) -> str:
    """The top-level package patch module `name` patches (from its name prefix)."""
    for prefix, target in TARGET_PREFIXES:
        if name.startswith(prefix):
            return target
    raise ValueError(f"patch module {name!r} matches no prefix in TARGET_PREFIXES {TARGET_PREFIXES}")


def _module_exists(name: str) -> bool:
    """Whether module `name` can be imported (finding a submodule imports its parent package, not itself)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or not a package
        return False


def missing_requirement(name: str, light: bool = False) -> str | None:
    """Why patch module `name` does not apply to the installed libraries (its target package is not installed, or
    something in REQUIRES does not exist), else None. `light=True` checks only the target package (imports nothing)."""
    target = target_of(name)
    if not _module_exists(target):
        return f"{target} is not installed"
    if light:
        return None
    requires, why = REQUIRES.get(name, ((), ""))
    for requirement in requires:
        module, _, attr = requirement.partition(":")
        found = _module_exists(module) and (not attr or hasattr(importlib.import_module(module), attr))
        if not found:
            version = installed_versions().get(target.replace("_", "-"))
            where = f"{target.replace('_', '-')} {version}" if version else target
            return f"{where} has no {requirement.replace(':', '.')} ({why})"
    return None


def apply_module(name: str, raise_errors: bool = True) -> str:
    """Apply patch module `name` (idempotent; all-or-nothing) unless `missing_requirement` skips it; returns and
    records its status for `patch_status()`. On failure every change it made is undone; then `raise_errors=True`
    raises the error, `raise_errors=False` warns once (PatchFailedWarning) and returns the status."""
    with _lock:
        check_versions()
        reason = missing_requirement(name)
        if reason is not None:
            _status[name] = f"skipped: {reason}"
            return _status[name]
        from r1_plugin._patches._marks import all_or_nothing

        try:
            with all_or_nothing():
                importlib.import_module(f"{__name__}.{name}").apply()
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
            first = _status.get(name) != status
            _status[name] = status
            if raise_errors:
                raise
            if first:
                warnings.warn(
                    f"r1_plugin's patch {name} was not applied (everything it changed is undone): "
                    f"{type(exc).__name__}: {exc}. {target_of(name)} works as without r1_plugin; what this patch "
                    "adds is missing. `r1-plugin doctor` shows every patch.",
                    PatchFailedWarning,
                    stacklevel=2,
                )
            return status
        _status[name] = "applied"
        return _status[name]


def apply_target(target: str, raise_errors: bool = True) -> None:
    """Apply every patch module of one target package (in PATCH_MODULES order)."""
    for name in PATCH_MODULES:
        if target_of(name) == target:
            apply_module(name, raise_errors)


def apply_all(raise_errors: bool = True) -> None:
    """Import every installed target and apply every patch now (safe to call any number of times); a target that
    is not installed, or a patch whose target is gone, is skipped."""
    for name in PATCH_MODULES:
        apply_module(name, raise_errors)


def patch_status() -> dict[str, str]:
    """Each patch module -> "applied", "skipped: <reason>", "failed: <error>", or "pending (<target> not imported
    yet)". Imports nothing."""
    status: dict[str, str] = {}
    for name in PATCH_MODULES:
        if name in _status:
            status[name] = _status[name]
        else:
            reason = missing_requirement(name, light=True)
            status[name] = f"skipped: {reason}" if reason else f"pending ({target_of(name)} not imported yet)"
    return status


def _fully_imported(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return module is not None and not getattr(spec, "_initializing", False)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a pending target it asks the other finders for the spec and makes the loader apply
    the target's patches right after the module has executed (so `import transformer_lens` returns it patched).

    A patch imports r1_plugin modules, and an r1_plugin module may be what imports the target in the first place
    (`r1_plugin.models.deepseek_v3.config` imports TransformerLens and is imported by the `tl_deepseek` patch). So
    the loaders of r1_plugin's own modules are wrapped too: while any of them is still executing in this thread the
    target's patches wait, and they are applied when the outermost one has finished.
    """

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self._local = threading.local()

    def _state(self) -> Any:
        if not hasattr(self._local, "depth"):
            self._local.depth = 0
            self._local.deferred = []
        return self._local

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        watched = fullname in self.pending
        ours = fullname.startswith("r1_plugin.")
        if not (watched or ours):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            vars(loader).pop("exec_module", None)  # back to the loader's own method for any later use
            state = self._state()
            state.depth += ours
            try:
                original_exec(module)
            except BaseException:
                self._finish(fullname, watched, ours, failed=True)
                raise
            self._finish(fullname, watched, ours, failed=False)

        loader.exec_module = exec_module  # an attribute of this one loader instance, removed after use
        return spec

    def _finish(self, fullname: str, watched: bool, ours: bool, failed: bool) -> None:
        """After a wrapped module executed: queue a target's patches; apply the queue once no r1_plugin module is
        executing any more in this thread."""
        state = self._state()
        state.depth -= ours
        if watched and not failed:  # a target whose import failed stays pending: a retry is hooked again
            self.pending.discard(fullname)
            state.deferred.append(fullname)
            if not self.pending:
                self.remove()
        if state.depth or not state.deferred:
            return
        targets, state.deferred = state.deferred, []
        for target in targets:  # a failing patch is recorded and warned about; the user's import goes on
            apply_target(target, raise_errors=False)

    def remove(self) -> None:
        """Take the hook off sys.meta_path (nothing left to wait for)."""
        if self in sys.meta_path:
            sys.meta_path.remove(self)


_hook = _PostImportHook()


def install() -> None:
    """Apply each target's patches now if it is imported, else when it is (what `import r1_plugin` does); a failing
    patch is recorded and warned about, never raised (see `apply_module`)."""
    with _lock:
        for target in dict.fromkeys(target_of(name) for name in PATCH_MODULES):
            if _fully_imported(target):
                apply_target(target, raise_errors=False)
            elif target not in sys.modules:
                _hook.pending.add(target)
        if _hook.pending and _hook not in sys.meta_path:
            sys.meta_path.insert(0, _hook)


def hook_installed() -> bool:
    """Whether the post-import hook is on sys.meta_path (some target not imported yet)."""
    return _hook in sys.meta_path

